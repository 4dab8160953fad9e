"""The seed demo: Linkerd 1's hello/world walkthrough, run locally by `dtabproxy demo`.

`proxy.demo.apps` holds the three tiny backends (hello, world, earth); `proxy.demo.run`
starts them and the proxy as child processes and prints the walkthrough. Nothing in
the data plane imports this package, and it imports nothing from the data plane: the
proxy is driven only as a separate process, the way a user would run it.
"""
