"""What Herald's benchmark scripts share: the release binary, and a `herald serve` process on a fresh
data directory."""

import os
import pathlib
import shutil
import subprocess
import tempfile
import threading

ROOT = pathlib.Path(__file__).resolve().parents[1]


def release_binary(given=None):
    """`given`, or a release build of herald in .build-release (built now)."""
    if given:
        return given
    subprocess.run(["swift", "build", "-c", "release", "--product", "herald", "--scratch-path", ".build-release"],
                   cwd=ROOT, check=True)
    return str(ROOT / ".build-release" / "release" / "herald")


class HeraldProcess:
    """`binary serve` on free ports and a fresh data directory (removed at stop), with `args`
    (`{data}` in them names that directory) and `files` written there first (name: text);
    `url` once it listens."""

    def __init__(self, binary, key, args=(), prefix="herald-bench-", files=None):
        self.data = tempfile.mkdtemp(prefix=prefix)
        for name, text in (files or {}).items():
            (pathlib.Path(self.data) / name).write_text(text)
        args = [arg.replace("{data}", self.data) for arg in args]
        self.proc = subprocess.Popen(
            [binary, "serve", "--port", "0", "--grpc-port", "0", "--data-dir", self.data + "/store",
             "--api-key", key, *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("HERALD_")})
        for line in self.proc.stdout:
            if "listening on http://" in line:
                self.url = line.split("listening on ", 1)[1].split()[0].rstrip("/")
                break
        else:
            raise RuntimeError(f"herald exited with {self.proc.wait()} before listening")
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def cpu_seconds(self):
        fields = pathlib.Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.data, ignore_errors=True)
