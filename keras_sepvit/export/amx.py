"""Time a CPU without AMX on one that has it: deny this process AMX tiles.

Intel's AMX (Sapphire Rapids and later Xeons) multiplies int8 and bf16
matrices in tile registers, and it is what puts SepViT-Lite's int8 TFLite
file near issue 19's bars on x86: XNNPACK runs its int8 FULLY_CONNECTEDs
there in half the time the same core takes with AVX-512 VNNI alone
(docs/benchmarks.md). Most CPUs have no AMX: AMD's, Intel's client parts,
cloud Xeons whose hypervisor hides it, phones. On such a CPU the int8 file
is slower, so a figure measured with AMX says little about them.

Linux gives a process the AMX tile data only when it asks for it
(`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), and every library
that uses AMX asks first and falls back to its AVX-512 VNNI kernels when
refused: XNNPACK, ONNX Runtime's MLAS, oneDNN. `deny_amx()` installs a
seccomp filter that refuses that request (EPERM) for this process and the
processes it starts, so the same core runs as a CPU with AVX-512 VNNI and
no AMX would (the Emerald Rapids cloud Xeon of docs/benchmarks.md is one).
Clock, caches and memory stay this machine's: the ratios are the figure to
read, not the milliseconds.

    from keras_sepvit.export import amx
    amx.deny_amx()  # first, before TensorFlow, LiteRT or ONNX Runtime run
"""

import ctypes
import os
import platform
import struct
import sys

_SYS_ARCH_PRCTL = 158  # x86-64
_ARCH_GET_XCOMP_PERM = 0x1022
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18
_AUDIT_ARCH_X86_64 = 0xC000003E
_PR_SET_NO_NEW_PRIVS = 38
_SYS_SECCOMP = 317  # x86-64
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_TSYNC = 1  # every thread of the process, not only the caller
_EPERM = 1

_denied = False


def amx_denied():
    """True once `deny_amx()` has run in this process."""
    return _denied


def cpu_has_amx(cpuinfo="/proc/cpuinfo"):
    """True when the CPU lists `amx_int8` in /proc/cpuinfo's flags."""
    try:
        with open(cpuinfo) as f:
            return any(line.startswith("flags") and "amx_int8" in line.split() for line in f)
    except OSError:
        return False


def amx_granted():
    """True when this process already holds the AMX tile data permission."""
    _check_platform()
    libc = ctypes.CDLL(None, use_errno=True)
    mask = ctypes.c_ulong(0)
    if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_GET_XCOMP_PERM, ctypes.byref(mask)) != 0:
        return False  # a kernel without dynamic XSTATE permissions (< 5.16): no AMX
    return bool(mask.value & (1 << _XFEATURE_XTILEDATA))


def deny_amx():
    """Refuses AMX tile data to this process and its children, from now on.

    Call it before anything runs a model (TensorFlow's oneDNN asks for AMX
    at its first matrix kernel, and a granted permission cannot be taken
    back). Returns True when AMX is denied, False when the CPU has no AMX
    (nothing to deny).

    Raises:
        RuntimeError: not Linux on x86-64, AMX already granted to this
            process, or the kernel refused the filter.
    """
    global _denied
    _check_platform()
    if not cpu_has_amx():
        return False
    if amx_granted():
        raise RuntimeError(
            "AMX was already granted to this process (something ran a model before "
            "deny_amx()); call deny_amx() first, before TensorFlow, LiteRT or ONNX "
            "Runtime run anything"
        )
    ld_word, jump_eq, ret = 0x20, 0x15, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_RET|K
    program = [  # (code, jump if true, jump if false, k); seccomp_data: nr@0, arch@4, args@16
        (ld_word, 0, 0, 4),
        (jump_eq, 0, 5, _AUDIT_ARCH_X86_64),
        (ld_word, 0, 0, 0),
        (jump_eq, 0, 3, _SYS_ARCH_PRCTL),
        (ld_word, 0, 0, 16),  # the low 32 bits of the first argument
        (jump_eq, 0, 1, _ARCH_REQ_XCOMP_PERM),
        (ret, 0, 0, 0x00050000 | _EPERM),  # SECCOMP_RET_ERRNO
        (ret, 0, 0, 0x7FFF0000),  # SECCOMP_RET_ALLOW
    ]
    code = b"".join(struct.pack("HBBI", *instruction) for instruction in program)
    buffer = ctypes.create_string_buffer(code, len(code))

    class _Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    filter_program = _Program(len(program), ctypes.addressof(buffer))
    if (
        libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
        or libc.syscall(
            _SYS_SECCOMP,
            _SECCOMP_SET_MODE_FILTER,
            _SECCOMP_FILTER_FLAG_TSYNC,
            ctypes.byref(filter_program),
        )
        != 0
    ):
        raise RuntimeError(f"The kernel refused the seccomp filter (errno {ctypes.get_errno()})")
    if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0:
        raise RuntimeError("The seccomp filter is installed, yet AMX was still granted")
    _denied = True
    return True


def _check_platform():
    if not (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")):
        raise RuntimeError(
            "Denying AMX works on Linux on x86-64 only (AMX is an x86 extension and the "
            f"permission a Linux one). Received: platform={sys.platform!r}, "
            f"machine={platform.machine()!r}"
        )


def add_benchmark_flag(parser):
    """Adds `--without-amx` to a benchmark's argument parser."""
    parser.add_argument(
        "--without-amx",
        action="store_true",
        help="deny this run AMX tiles (Linux, x86-64): time the CPU as one with AVX-512 "
        "VNNI and no AMX would run (keras_sepvit.export.amx); results go to an "
        "amx-denied/ folder unless --out is given",
    )


def apply_benchmark_flag(args, results=None):
    """Denies AMX when `args.without_amx`; returns the folder for results.

    `results` is the benchmark's default folder; with `--without-amx` and no
    `--out` of the user's (`args.out` None) the results go to its
    `amx-denied/` subfolder, so they never replace the figures of the CPU
    as it is.
    """
    if args.without_amx and not deny_amx():
        print("--without-amx: this CPU has no AMX, so there is nothing to deny", flush=True)
    if getattr(args, "out", None):
        return args.out
    if results is None or not args.without_amx:
        return results
    return os.path.join(results, "amx-denied")
