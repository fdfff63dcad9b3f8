"""keras_sepvit.export.amx: a process that denies itself AMX, and the
benchmarks' --without-amx (what it changes is checked through the kernel's
answer, not by timing)."""

import argparse
import os
import subprocess
import sys
import textwrap

import pytest

from keras_sepvit.export import amx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_AMX = amx.cpu_has_amx()
needs_amx = pytest.mark.skipif(not HAS_AMX, reason="this CPU has no AMX to deny")


def _python(code):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip


def test_cpu_has_amx_reads_the_flags(tmp_path):
    with_amx = tmp_path / "with"
    with_amx.write_text("processor\t: 0\nflags\t\t: fpu avx512_vnni amx_tile amx_int8\n")
    without = tmp_path / "without"
    without.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_vnni avx_vnni\n")
    assert amx.cpu_has_amx(str(with_amx))
    assert not amx.cpu_has_amx(str(without))
    assert not amx.cpu_has_amx(str(tmp_path / "absent"))


@needs_amx
def test_deny_amx_refuses_the_tile_permission_to_the_process_and_its_children():
    result = _python(
        """
        import ctypes, subprocess, sys
        from keras_sepvit.export import amx
        from keras_sepvit.export.profiling import machine_description

        assert not amx.amx_denied()
        assert amx.deny_amx() is True
        libc = ctypes.CDLL(None, use_errno=True)
        # What XNNPACK, ONNX Runtime and oneDNN ask before using AMX.
        print("request", libc.syscall(158, 0x1023, 18), ctypes.get_errno())
        print("granted", amx.amx_granted(), "denied", amx.amx_denied())
        print(machine_description())
        child = (
            "import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
            "print('child', libc.syscall(158, 0x1023, 18), ctypes.get_errno())"
        )
        print(subprocess.run([sys.executable, "-c", child], capture_output=True,
                             text=True).stdout.strip())
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "request -1 1" in lines  # EPERM
    assert "granted False denied True" in lines
    assert "child -1 1" in lines  # inherited by the processes it starts
    assert any("AMX denied to this process (--without-amx)" in line for line in lines)


@needs_amx
def test_a_process_that_already_holds_amx_is_told_to_deny_it_first():
    result = _python(
        """
        import ctypes
        from keras_sepvit.export import amx

        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.syscall(158, 0x1023, 18) == 0  # as oneDNN does at its first matmul
        assert amx.amx_granted()
        try:
            amx.deny_amx()
        except RuntimeError as error:
            print("refused:", error)
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "refused: AMX was already granted to this process" in result.stdout
    assert "call deny_amx() first" in result.stdout


def test_without_amx_results_go_to_their_own_folder(monkeypatch):
    plain = argparse.Namespace(without_amx=False, out=None)
    assert amx.apply_benchmark_flag(plain, "/r") == "/r"
    mine = argparse.Namespace(without_amx=False, out="/mine")
    assert amx.apply_benchmark_flag(mine, "/r") == "/mine"
    assert amx.apply_benchmark_flag(argparse.Namespace(without_amx=False)) is None
    monkeypatch.setattr(amx, "deny_amx", lambda: True)  # the folder rule, not the denial
    denied = argparse.Namespace(without_amx=True, out=None)
    assert amx.apply_benchmark_flag(denied, "/r") == os.path.join("/r", "amx-denied")
    assert amx.apply_benchmark_flag(argparse.Namespace(without_amx=True, out="/m"), "/r") == "/m"


@pytest.mark.slow
def test_tflite_profile_without_amx_says_so_in_its_header(tmp_path):
    """The flag through a benchmark's command line: the profile's header says
    that AMX was denied (or, on a CPU without AMX, that there was nothing to
    deny)."""
    write = _python(
        f"""
        import keras_sepvit
        from keras_sepvit.export import to_tflite
        model = keras_sepvit.SepViTLite(input_shape=(32, 32, 3), classes=4)
        to_tflite(model, {str(tmp_path / "lite.tflite")!r})
        """
    )
    assert write.returncode == 0, write.stderr[-3000:]
    script = os.path.join(ROOT, "benchmarks", "tflite_profile.py")
    result = subprocess.run(
        [sys.executable, script, str(tmp_path / "lite.tflite"), "--runs", "2", "--without-amx"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    if HAS_AMX:
        assert "AMX denied to this process (--without-amx)" in result.stdout
    else:
        assert "this CPU has no AMX, so there is nothing to deny" in result.stdout
    assert "| op type | count | ms | % | delegated |" in result.stdout


@pytest.mark.slow
def test_onnx_latency_without_amx_runs_its_export_children_under_the_denial():
    """onnx_latency.py denies AMX after its argument parsing (its PyTorch
    export child must not import keras_sepvit, hence TensorFlow); the children
    inherit the filter and still export, and the table's header says so."""
    script = os.path.join(ROOT, "benchmarks", "onnx_latency.py")
    result = subprocess.run(
        [sys.executable, script, "--quick", "--without-amx"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| SepViT-Lite / PVTv2-b0 |" in result.stdout  # both exports ran
    if HAS_AMX:
        assert "AMX denied to this process (--without-amx)" in result.stdout
    else:
        assert "this CPU has no AMX, so there is nothing to deny" in result.stdout
