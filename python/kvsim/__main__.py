"""python -m kvsim ARGS: the kvsim command line. The installed executable beside this Python
(pip install puts it in the environment's bin/) takes over the process, so progress, signals and
exit status are the CLI's own; without it (the checkout's build/python) the same commands run
in-process through the engine."""
import os
import sys


def main(argv):
    exe = os.path.join(os.path.dirname(sys.executable), "kvsim")
    if os.access(exe, os.X_OK):
        os.execv(exe, [exe, *argv])
    from kvsim import _kvsim
    code, out, err = _kvsim.run_command(argv)
    sys.stdout.write(out)
    sys.stderr.write(err)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
