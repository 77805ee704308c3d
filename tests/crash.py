"""Crash a job on purpose: start a chromabeam command in its own process group and
SIGKILL it as soon as its first manifest part is published."""
import os
import signal
import subprocess
import sys
import time


def kill_at_first_part(args: list[str], output, timeout_s: float = 120.0) -> None:
    """Run ``python -m chromabeam ARGS`` writing to ``output`` (a local folder) and kill it
    (the whole process group) once ``output/manifest`` holds a published part."""
    cmd = [sys.executable, "-m", "chromabeam", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    manifest = os.path.join(str(output), "manifest")
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(manifest) and any(n.startswith("part-") for n in os.listdir(manifest)):
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
