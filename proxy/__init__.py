import os

if os.environ.get("DTABPROXY_PURE") == "1":  # run the .py files, not their compiled build
    from ._purepy import install

    install()
else:
    from ._purepy import stale as _stale

    if _stale():  # edited since the build: the source runs (`make build` compiles again)
        import logging

        from ._purepy import install

        install()
        logging.getLogger(__name__).warning(
            "the compiled build is older than the source (%s, ...); running pure Python. "
            "Rebuild with `make build`.", _stale()[0]
        )
