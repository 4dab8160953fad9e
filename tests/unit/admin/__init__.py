"""Tests of proxy.admin and proxy.telemetry without sockets."""
