"""A phone over adb: push the .tflite and the user's `benchmark_model`, pin to the fastest core(s)
and parse the tool's output. Every adb call has a timeout and transient failures are retried, so
a missing, unauthorised or vanishing device gives one clear error, never a hang.

The phone's tool reports only summary statistics, so preemption cannot be detected per
iteration there: `preempted_fraction` is 0 for android results (not measured, not proven clean).

Timeouts and retries: $MNAS_ADB_TIMEOUT (seconds per adb call, default 120; benchmark runs get
5x that) and $MNAS_ADB_RETRIES (default 2).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mnas.errors import UserError
from mnas.latency.backends.android_output import BenchmarkOutput, parse_benchmark_output
from mnas.latency.backends.base import Backend, ModelFile, Runner
from mnas.latency.measure.protocol import Protocol
from mnas.latency.measure.sample import ProcessSample
from mnas.latency.target import Target

if TYPE_CHECKING:
    from torch import nn


REMOTE_DIR = "/data/local/tmp/mnas"
_TRANSIENT = ("device offline", "no devices/emulators found", "not found", "closed",
              "protocol fault", "connection reset", "device still connecting")


class Adb:
    """A thin adb client: `call` runs one adb command with a timeout and bounded retries."""

    def __init__(self, serial: str | None = None, timeout_s: float | None = None,
                 retries: int | None = None) -> None:
        exe = shutil.which(os.environ.get("ADB", "adb"))
        if exe is None:
            raise UserError("adb not found on PATH; install Android platform-tools and put adb on "
                            "PATH (or set $ADB to its path)")
        self.exe = exe
        self.serial = serial
        self.timeout_s = float(timeout_s if timeout_s is not None else os.environ.get("MNAS_ADB_TIMEOUT", 120))
        self.retries = int(retries if retries is not None else os.environ.get("MNAS_ADB_RETRIES", 2))

    def call(self, *args: str, timeout_s: float | None = None) -> str:
        cmd = [self.exe] + (["-s", self.serial] if self.serial else []) + list(args)
        timeout = timeout_s or self.timeout_s
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(2.0, timeout))
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                      stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                last = f"timed out after {timeout:g} s"
                continue
            out = (proc.stdout or "") + (proc.stderr or "")
            low = out.lower()
            if "unauthorized" in low:
                raise _unauthorised(self.serial)
            if proc.returncode != 0 and any(t in low for t in _TRANSIENT):
                last = _first_error(out)
                continue
            if proc.returncode != 0:
                raise UserError(f"adb {' '.join(args[:2])} failed: {_first_error(out)}")
            return out
        who = f"device {self.serial}" if self.serial else "the device"
        raise UserError(f"adb {' '.join(args[:1])} on {who} failed after {self.retries + 1} tries "
                        f"({last}); check the USB cable / `adb devices` and retry")

    def device(self) -> str:
        """The serial to use; clear errors for no device, several devices, unauthorised, offline."""
        states = {}
        for line in self.call("devices").splitlines():
            parts = line.split()
            if len(parts) >= 2 and not line.startswith(("List of devices", "*")):
                states[parts[0]] = parts[1]
        if self.serial:
            state = states.get(self.serial)
            if state is None:
                raise UserError(f"device {self.serial} is not connected (adb sees: "
                                f"{', '.join(states) or 'nothing'}); plug it in or fix --serial")
        elif not states:
            raise UserError("no Android device connected; plug in a phone with USB debugging on "
                            "(check `adb devices`)")
        elif len(states) > 1:
            raise UserError(f"{len(states)} devices connected ({', '.join(states)}); choose one with --serial")
        else:
            self.serial, state = next(iter(states.items()))
        if state == "unauthorized":
            raise _unauthorised(self.serial)
        if state != "device":
            raise UserError(f"device {self.serial} is {state}; reconnect it (and unlock it), then retry")
        return self.serial

    def shell(self, command: str, timeout_s: float | None = None) -> str:
        return self.call("shell", command, timeout_s=timeout_s)

    def push(self, local: Path, remote: str) -> None:
        self.call("push", str(local), remote, timeout_s=max(self.timeout_s, 300))


def _unauthorised(serial: str | None) -> UserError:
    return UserError(f"device {serial or ''} is unauthorised: unlock the phone, accept the "
                     "'Allow USB debugging' prompt, then retry".replace("device  ", "device "))


def _first_error(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in lines:
        if "error" in ln.lower():
            return ln
    return lines[-1] if lines else "no output"


def fastest_cores(adb: Adb, count: int) -> list[int]:
    """The `count` cores with the highest cpuinfo_max_freq (the big cores), fastest first."""
    out = adb.shell("for f in /sys/devices/system/cpu/cpu[0-9]*/cpufreq/cpuinfo_max_freq; "
                    'do echo "$f $(cat $f)"; done')
    freqs = []
    for m in re.finditer(r"cpu(\d+)/cpufreq/cpuinfo_max_freq\s+(\d+)", out):
        freqs.append((int(m.group(2)), int(m.group(1))))
    freqs.sort(reverse=True)
    return [core for _, core in freqs[:count]]


def taskset_mask(cores: list[int]) -> str:
    return format(sum(1 << c for c in cores), "x")


class AndroidBackend(Backend):
    """Runs on the phone: `measure_files` drives benchmark_model over adb. One call is one round:
    the reference and every file in alternation, one benchmark_model run each (ref, file 1, ref,
    file 2, ref), so each file's run sits between two reference runs (phones throttle too)."""

    name = "android"
    suffix = ".tflite"
    local = False

    def __init__(self) -> None:
        self._pushed: dict[tuple[str, str], str] = {}  # (serial, local file digest) -> remote path

    def version(self, target: Target) -> str:
        return "benchmark_model"  # the binary's digest is part of the target fingerprint

    def describe(self) -> str:
        return "benchmark_model (user-supplied)"

    def note(self) -> str:
        try:
            return "device " + Adb(timeout_s=10, retries=0).device()
        except UserError as exc:
            return str(exc).split(";")[0]

    def unavailable(self) -> str | None:
        if shutil.which(os.environ.get("ADB", "adb")) is None:
            return "adb not found on PATH; install Android platform-tools"
        return None

    def check(self, target: Target) -> str | None:
        if not target.benchmark_binary:
            return ("the android backend needs a TFLite benchmark_model binary built for the phone; "
                    "pass --benchmark-binary PATH (see the TFLite benchmark tool docs)")
        return super().check(target)

    def machine(self, target: Target) -> str:
        return f"android:{target.serial or 'default'}"

    def export(self, module: nn.Module, path: Path, target: Target) -> Path:
        from mnas.export import to_tflite  # lazy: torch is only needed where models are exported

        return to_tflite(module, path, target.resolution, target.batch)

    def load(self, path: Path, target: Target) -> Runner:
        raise UserError("the android backend runs on the phone, not in a local process")

    def measure_files(self, files: Sequence[ModelFile], reference: Path | None, target: Target,
                      protocol: Protocol, cpus: Sequence[int]) -> list[list[ProcessSample]]:
        if any(f.parts for f in files):
            raise UserError("latency tables cannot be built for the android backend")
        binary = Path(target.benchmark_binary or "")
        if not binary.is_file():
            raise UserError(f"benchmark binary {binary} does not exist; pass --benchmark-binary PATH")
        adb = Adb(target.serial)
        serial = adb.device()
        adb.shell(f"mkdir -p {REMOTE_DIR}")
        remote_bin = self._push(adb, serial, binary, "benchmark_model")
        adb.shell(f"chmod 755 {remote_bin}")
        remote = [self._push(adb, serial, f.path, f.path.name) for f in files]
        cores = fastest_cores(adb, target.threads)
        pin = f"taskset {taskset_mask(cores)} " if cores else ""

        def run(graph: str) -> BenchmarkOutput:
            cmd = (f"{pin}{remote_bin} --graph={graph} --num_threads={target.threads} "
                   f"--warmup_runs={protocol.warmup_iters} --warmup_min_secs={protocol.warmup_s:g} "
                   f"--num_runs={protocol.iters} --use_xnnpack=true")
            return parse_benchmark_output(adb.shell(cmd, timeout_s=adb.timeout_s * 5))

        ref_remote = self._push(adb, serial, reference, reference.name) if reference is not None else None
        before = run(ref_remote) if ref_remote else None
        out = []
        for graph in remote:
            parsed = run(graph)
            sample = _sample(parsed, protocol)
            if ref_remote and before is not None:
                after = run(ref_remote)
                ref_mean = (before.typical_us + after.typical_us) / 2
                sample.relative = parsed.typical_us / ref_mean
                sample.reference_ms = ref_mean / 1e3
                before = after
            out.append([sample])
        return out

    def _push(self, adb: Adb, serial: str, local: Path, name: str) -> str:
        key = (serial, _digest(local))
        if key not in self._pushed:
            remote = f"{REMOTE_DIR}/{name}"
            adb.push(local, remote)
            self._pushed[key] = remote
        return self._pushed[key]


def _sample(parsed: BenchmarkOutput, protocol: Protocol) -> ProcessSample:
    lo = parsed.p5_us if parsed.p5_us is not None else parsed.min_us or parsed.avg_us
    hi = parsed.p95_us if parsed.p95_us is not None else parsed.max_us or parsed.avg_us
    return ProcessSample(median_ms=parsed.typical_us / 1e3, p10_ms=lo / 1e3, p90_ms=hi / 1e3,
                         mean_ms=parsed.avg_us / 1e3, std_ms=(parsed.std_us or 0.0) / 1e3,
                         runs=parsed.count or protocol.iters)


def _digest(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


BACKEND = AndroidBackend()
