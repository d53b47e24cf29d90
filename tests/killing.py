"""kill -9 of a training subprocess right after an epoch's checkpoint, for the resume tests."""
import os
import signal
import subprocess
import time
from pathlib import Path

import torch


def kill_after_epoch(proc: subprocess.Popen, last_pt: Path, epoch: int) -> list[str]:
    """Read ``proc``'s stdout (the fit's ``on_epoch`` prints "epoch N") up to "epoch ``epoch``", wait until
    ``last_pt`` holds that epoch (it is written right after the callback), then SIGKILL the process group, so
    the kill lands in the next epoch. Returns the lines read."""
    lines = []
    for line in proc.stdout:
        lines.append(line.strip())
        if line.strip() == f"epoch {epoch}":
            deadline = time.time() + 60
            while time.time() < deadline:
                if last_pt.exists() and torch.load(last_pt, weights_only=True)["epoch"] == epoch - 1:
                    break
                time.sleep(0.05)
            os.killpg(proc.pid, signal.SIGKILL)
            break
    return lines
