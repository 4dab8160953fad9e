"""`workers: auto`: the CPUs the process may use, from the affinity mask and the cgroup
CPU quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us`), on fake trees."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from config import ConfigError, load_text
from proxy.__main__ import _workers_flag
from proxy.workers import available_cpus, cgroup_cpu_limit, describe_exit, resolve_workers

V2_MOUNT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"


def tree(root: Path, files: dict[str, str]) -> str:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return str(root)


def test_v2_quota_rounds_up_and_bounds_the_affinity(tmp_path: Path) -> None:
    root = tree(tmp_path, {
        "proc/self/cgroup": "0::/kubepods/pod1/c1\n",
        "proc/self/mountinfo": V2_MOUNT,
        "sys/fs/cgroup/kubepods/pod1/c1/cpu.max": "150000 100000\n",  # a 1500m limit
    })  # fmt: skip
    assert cgroup_cpu_limit(root) == 1.5
    assert available_cpus(root, affinity=8) == 2
    assert available_cpus(root, affinity=1) == 1  # the affinity mask is tighter


def test_v2_a_parent_limit_applies_and_max_is_no_limit(tmp_path: Path) -> None:
    root = tree(tmp_path, {
        "proc/self/cgroup": "0::/a/b\n",
        "proc/self/mountinfo": V2_MOUNT,
        "sys/fs/cgroup/a/b/cpu.max": "max 100000\n",
        "sys/fs/cgroup/a/cpu.max": "300000 100000\n",
        "sys/fs/cgroup/cpu.max": "max 100000\n",
    })  # fmt: skip
    assert available_cpus(root, affinity=16) == 3


def test_v2_in_a_cgroup_namespace_reads_the_mount_itself(tmp_path: Path) -> None:
    # Inside a container: the mount's root is the container's cgroup, /proc says "/".
    root = tree(tmp_path, {
        "proc/self/cgroup": "0::/\n",
        "proc/self/mountinfo": "30 23 0:26 /kubepods/pod1/c1 /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n",
        "sys/fs/cgroup/cpu.max": "50000 100000\n",
    })  # fmt: skip
    assert cgroup_cpu_limit(root) == 0.5
    assert available_cpus(root, affinity=4) == 1  # at least 1


def test_v1_cfs_quota(tmp_path: Path) -> None:
    root = tree(tmp_path, {
        "proc/self/cgroup": "12:memory:/docker/x\n4:cpu,cpuacct:/docker/x\n1:name=systemd:/docker/x\n",
        "proc/self/mountinfo": "40 30 0:35 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
                               "41 30 0:36 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
        "sys/fs/cgroup/cpu,cpuacct/docker/x/cpu.cfs_quota_us": "250000\n",
        "sys/fs/cgroup/cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n",
    })  # fmt: skip
    assert cgroup_cpu_limit(root) == 2.5
    assert available_cpus(root, affinity=8) == 3


def test_v1_unlimited_and_no_cgroup_at_all_leave_the_affinity(tmp_path: Path) -> None:
    v1 = tree(tmp_path / "v1", {
        "proc/self/cgroup": "4:cpu,cpuacct:/\n",
        "proc/self/mountinfo": "40 30 0:35 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n",
        "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
    })  # fmt: skip
    assert cgroup_cpu_limit(v1) is None
    assert available_cpus(v1, affinity=6) == 6
    assert available_cpus(str(tmp_path / "nothing"), affinity=3) == 3


def test_auto_and_numbers() -> None:
    assert resolve_workers("auto", cpus=lambda: 5) == 5
    assert resolve_workers(3, cpus=lambda: 5) == 3
    assert available_cpus() >= 1  # this machine, whatever it is


def test_the_flag_and_the_config_key() -> None:
    assert _workers_flag("auto") == "auto"
    assert _workers_flag("4") == 4
    for bad in ("0", "-1", "x", "2000"):
        with pytest.raises(argparse.ArgumentTypeError, match="1-1024 or 'auto'"):
            _workers_flag(bad)
    base = "routers:\n- protocol: http\n  dtab: /svc => /$/inet/127.0.0.1/1\n"
    assert load_text(base).workers == 1
    assert load_text("workers: auto\n" + base).workers == "auto"
    assert load_text("workers: 4\n" + base).workers == 4
    with pytest.raises(ConfigError, match=r"c.yaml:1: workers: expected an integer 1-1024 or 'auto'.*got 'many'"):
        load_text("workers: many\n" + base, source="c.yaml")


def test_exit_statuses_read_as_people_say_them() -> None:
    assert describe_exit(-9) == "was killed by signal 9 (SIGKILL)"
    assert describe_exit(3) == "exited with status 3"
