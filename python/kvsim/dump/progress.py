"""Progress with an ETA on stderr: rewritten in place on a terminal, else one line every few
seconds (and always the last), so logs of long dumps stay short."""
import sys
import time

LOG_EVERY_S = 5.0
TTY_EVERY_S = 0.25


def format_seconds(s):
    s = max(0.0, s)
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    m, s = divmod(int(round(s)), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


class Progress:
    def __init__(self, prog, label, total, stream=None, clock=time.monotonic):
        self.prog, self.label, self.total = prog, label, int(total)
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.clock = clock
        self.t0 = clock()
        self.last = None

    def restart(self):
        self.t0 = self.clock()

    def line(self, done):
        elapsed = self.clock() - self.t0
        text = f"{self.prog}: {self.label} {done}/{self.total}, {format_seconds(elapsed)}"
        if 0 < done < self.total:
            text += f", ETA {format_seconds(elapsed / done * (self.total - done))}"
        return text

    def update(self, done):
        now = self.clock()
        final = done >= self.total
        every = TTY_EVERY_S if self.tty else LOG_EVERY_S
        if not final and self.last is not None and now - self.last < every:
            return
        self.last = now
        if self.tty:
            print("\r" + self.line(done) + "\x1b[K", end="\n" if final else "", file=self.stream,
                  flush=True)
        else:
            print(self.line(done), file=self.stream, flush=True)
