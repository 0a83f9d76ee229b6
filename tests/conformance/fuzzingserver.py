# ruff: noqa: UP010, UP031, UP036  (Python 2.7 code: runs under .venv-autobahn)
"""Run the Autobahn|Testsuite fuzzing server bound to 127.0.0.1 only.

Python 2.7 launcher: run it with ``.venv-autobahn/bin/python`` (created by
``scripts/autobahn-env.sh``), not with the project's Python 3. It is written
so that it also *parses* under Python 3 (linters, compileall), but it only
runs under 2.7 because ``autobahntestsuite`` does.

    .venv-autobahn/bin/python tests/conformance/fuzzingserver.py \
        --spec /tmp/x/fuzzingserver.json --port 9001

The stock ``wstest -m fuzzingserver`` calls ``listenWS(factory)``, whose
``interface`` defaults to ``''``, i.e. it binds 0.0.0.0 and also starts an
embedded HTTP server on port 8080 (``--webport``). Instead of going through
``wstest`` we build the ``FuzzingServerFactory`` ourselves (exactly what
``autobahntestsuite.fuzzing.startServer`` does) and call
``listenWS(factory, interface="127.0.0.1")``. No embedded web server is
started. Nothing inside the venv is patched.

Reports (``index.json``, ``index.html`` and one pair of files per case) are
written to the spec's ``outdir`` whenever a client opens
``/updateReports?agent=NAME``.

SIGTERM / SIGINT stop the Twisted reactor and the process exits cleanly;
with ``--exit-with-parent`` it also stops once its parent process is gone.
"""

from __future__ import print_function

import argparse
import json
import os
import sys

BIND_INTERFACE = "127.0.0.1"

# Python puts this script's directory first on sys.path, and it holds our
# Python 3 helper ``autobahn.py``, which would shadow the real ``autobahn``
# package that autobahntestsuite imports. Drop that entry.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Autobahn|Testsuite fuzzing server, bound to 127.0.0.1 only"
    )
    parser.add_argument("--spec", required=True, help="path of the fuzzingserver spec (JSON)")
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help="TCP port to listen on (default: the port of the spec's url)",
    )
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop when the parent process dies (no orphaned server if a test run is killed hard)",
    )
    parser.add_argument(
        "--ready-file",
        default=None,
        help="write the listening port to this file once listening (lets the"
        " parent tell our socket from anybody else's on that port)",
    )
    parser.add_argument("--debug", action="store_true", help="verbose Twisted logs")
    return parser.parse_args(argv)


def main(argv=None):
    args = _parse_args(sys.argv[1:] if argv is None else argv)

    if sys.version_info[0] != 2:
        sys.stderr.write(
            "fuzzingserver.py must run under Python 2.7 "
            "(.venv-autobahn/bin/python), not %s\n" % sys.version.split()[0]
        )
        return 2

    # Progress lines ("Running test case ID ...") go to stdout: make it
    # unbuffered so a log file / pipe shows them as they happen.
    sys.stdout = os.fdopen(sys.stdout.fileno(), "w", 0)

    with open(args.spec) as f:
        spec = json.load(f)

    if args.port is not None:
        if not 0 < args.port < 65536:
            sys.stderr.write("invalid --port %r\n" % args.port)
            return 2
        # The factory derives its listening port from spec["url"].
        spec["url"] = "ws://%s:%d" % (BIND_INTERFACE, args.port)
    spec.setdefault("url", "ws://%s:9001" % BIND_INTERFACE)
    spec.setdefault("outdir", "./reports/clients")
    spec.setdefault("cases", ["*"])
    if spec.get("key") or spec.get("cert"):
        sys.stderr.write("TLS (key/cert in spec) is not supported by this launcher\n")
        return 2

    outdir = spec["outdir"]
    if not os.path.isdir(outdir):
        os.makedirs(outdir)

    # Same first import as wstest.py (picks kqueue on BSD/macOS; no-op on
    # Linux, where Twisted's default epoll reactor is used).
    import autobahntestsuite.choosereactor  # noqa: F401
    from autobahn.twisted.websocket import listenWS
    from autobahntestsuite.fuzzing import FuzzingServerFactory
    from twisted.internet import reactor
    from twisted.python import log

    if args.debug:
        log.startLogging(sys.stdout)

    factory = FuzzingServerFactory(spec, debug=args.debug)
    port = listenWS(factory, interface=BIND_INTERFACE)
    host = port.getHost()
    print(
        "fuzzingserver listening on %s:%d, reports in %s"
        % (host.host, host.port, os.path.abspath(outdir))
    )
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % host.port)
        os.rename(tmp, args.ready_file)
    if args.exit_with_parent:
        from twisted.internet.task import LoopingCall

        parent = os.getppid()

        def _check_parent():
            if os.getppid() != parent:
                print("parent process %d is gone; shutting down" % parent)
                reactor.stop()

        LoopingCall(_check_parent).start(1.0, now=False)

    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
