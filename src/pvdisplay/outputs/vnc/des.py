"""Single-block DES (FIPS 46-3) and the VNC authentication response built on it.

RFB's "VNC authentication" encrypts a 16-byte challenge with DES-ECB under the
password, first 8 bytes NUL-padded, with the bits of every key byte reversed (the
original implementation loaded the key LSB first). DES is only used for that: 32
bytes per connection, so a clear table-driven implementation is fast enough and
saves a crypto dependency.
"""

from typing import Final

_IP: Final = (
    58, 50, 42, 34, 26, 18, 10, 2, 60, 52, 44, 36, 28, 20, 12, 4,
    62, 54, 46, 38, 30, 22, 14, 6, 64, 56, 48, 40, 32, 24, 16, 8,
    57, 49, 41, 33, 25, 17, 9, 1, 59, 51, 43, 35, 27, 19, 11, 3,
    61, 53, 45, 37, 29, 21, 13, 5, 63, 55, 47, 39, 31, 23, 15, 7,
)  # fmt: skip
_FP: Final = tuple(_IP.index(position) + 1 for position in range(1, 65))
_E: Final = (
    32, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 8, 9, 10, 11,
    12, 13, 12, 13, 14, 15, 16, 17, 16, 17, 18, 19, 20, 21, 20, 21,
    22, 23, 24, 25, 24, 25, 26, 27, 28, 29, 28, 29, 30, 31, 32, 1,
)  # fmt: skip
_P: Final = (
    16, 7, 20, 21, 29, 12, 28, 17, 1, 15, 23, 26, 5, 18, 31, 10,
    2, 8, 24, 14, 32, 27, 3, 9, 19, 13, 30, 6, 22, 11, 4, 25,
)  # fmt: skip
_PC1: Final = (
    57, 49, 41, 33, 25, 17, 9, 1, 58, 50, 42, 34, 26, 18,
    10, 2, 59, 51, 43, 35, 27, 19, 11, 3, 60, 52, 44, 36,
    63, 55, 47, 39, 31, 23, 15, 7, 62, 54, 46, 38, 30, 22,
    14, 6, 61, 53, 45, 37, 29, 21, 13, 5, 28, 20, 12, 4,
)  # fmt: skip
_PC2: Final = (
    14, 17, 11, 24, 1, 5, 3, 28, 15, 6, 21, 10, 23, 19, 12, 4,
    26, 8, 16, 7, 27, 20, 13, 2, 41, 52, 31, 37, 47, 55, 30, 40,
    51, 45, 33, 48, 44, 49, 39, 56, 34, 53, 46, 42, 50, 36, 29, 32,
)  # fmt: skip
_ROTATIONS: Final = (1, 1, 2, 2, 2, 2, 2, 2, 1, 2, 2, 2, 2, 2, 2, 1)
_SBOXES: Final = (
    (14, 4, 13, 1, 2, 15, 11, 8, 3, 10, 6, 12, 5, 9, 0, 7,
     0, 15, 7, 4, 14, 2, 13, 1, 10, 6, 12, 11, 9, 5, 3, 8,
     4, 1, 14, 8, 13, 6, 2, 11, 15, 12, 9, 7, 3, 10, 5, 0,
     15, 12, 8, 2, 4, 9, 1, 7, 5, 11, 3, 14, 10, 0, 6, 13),
    (15, 1, 8, 14, 6, 11, 3, 4, 9, 7, 2, 13, 12, 0, 5, 10,
     3, 13, 4, 7, 15, 2, 8, 14, 12, 0, 1, 10, 6, 9, 11, 5,
     0, 14, 7, 11, 10, 4, 13, 1, 5, 8, 12, 6, 9, 3, 2, 15,
     13, 8, 10, 1, 3, 15, 4, 2, 11, 6, 7, 12, 0, 5, 14, 9),
    (10, 0, 9, 14, 6, 3, 15, 5, 1, 13, 12, 7, 11, 4, 2, 8,
     13, 7, 0, 9, 3, 4, 6, 10, 2, 8, 5, 14, 12, 11, 15, 1,
     13, 6, 4, 9, 8, 15, 3, 0, 11, 1, 2, 12, 5, 10, 14, 7,
     1, 10, 13, 0, 6, 9, 8, 7, 4, 15, 14, 3, 11, 5, 2, 12),
    (7, 13, 14, 3, 0, 6, 9, 10, 1, 2, 8, 5, 11, 12, 4, 15,
     13, 8, 11, 5, 6, 15, 0, 3, 4, 7, 2, 12, 1, 10, 14, 9,
     10, 6, 9, 0, 12, 11, 7, 13, 15, 1, 3, 14, 5, 2, 8, 4,
     3, 15, 0, 6, 10, 1, 13, 8, 9, 4, 5, 11, 12, 7, 2, 14),
    (2, 12, 4, 1, 7, 10, 11, 6, 8, 5, 3, 15, 13, 0, 14, 9,
     14, 11, 2, 12, 4, 7, 13, 1, 5, 0, 15, 10, 3, 9, 8, 6,
     4, 2, 1, 11, 10, 13, 7, 8, 15, 9, 12, 5, 6, 3, 0, 14,
     11, 8, 12, 7, 1, 14, 2, 13, 6, 15, 0, 9, 10, 4, 5, 3),
    (12, 1, 10, 15, 9, 2, 6, 8, 0, 13, 3, 4, 14, 7, 5, 11,
     10, 15, 4, 2, 7, 12, 9, 5, 6, 1, 13, 14, 0, 11, 3, 8,
     9, 14, 15, 5, 2, 8, 12, 3, 7, 0, 4, 10, 1, 13, 11, 6,
     4, 3, 2, 12, 9, 5, 15, 10, 11, 14, 1, 7, 6, 0, 8, 13),
    (4, 11, 2, 14, 15, 0, 8, 13, 3, 12, 9, 7, 5, 10, 6, 1,
     13, 0, 11, 7, 4, 9, 1, 10, 14, 3, 5, 12, 2, 15, 8, 6,
     1, 4, 11, 13, 12, 3, 7, 14, 10, 15, 6, 8, 0, 5, 9, 2,
     6, 11, 13, 8, 1, 4, 10, 7, 9, 5, 0, 15, 14, 2, 3, 12),
    (13, 2, 8, 4, 6, 15, 11, 1, 10, 9, 3, 14, 5, 0, 12, 7,
     1, 15, 13, 8, 10, 3, 7, 4, 12, 5, 6, 11, 0, 14, 9, 2,
     7, 11, 4, 1, 9, 12, 14, 2, 0, 6, 10, 13, 15, 3, 5, 8,
     2, 1, 14, 7, 4, 10, 8, 13, 15, 12, 9, 0, 3, 5, 6, 11),
)  # fmt: skip

BLOCK_SIZE: Final = 8


def _permute(value: int, table: tuple[int, ...], width: int) -> int:
    """Bit i of the result (from the most significant) is bit table[i] of value (1-based)."""
    result = 0
    for position in table:
        result = (result << 1) | ((value >> (width - position)) & 1)
    return result


def _round_keys(key: bytes) -> list[int]:
    halves = _permute(int.from_bytes(key, "big"), _PC1, 64)
    left, right = halves >> 28, halves & 0xFFFFFFF
    keys = []
    for rotation in _ROTATIONS:
        left = ((left << rotation) | (left >> (28 - rotation))) & 0xFFFFFFF
        right = ((right << rotation) | (right >> (28 - rotation))) & 0xFFFFFFF
        keys.append(_permute((left << 28) | right, _PC2, 56))
    return keys


def _feistel(half: int, round_key: int) -> int:
    mixed = _permute(half, _E, 32) ^ round_key
    substituted = 0
    for index, box in enumerate(_SBOXES):
        six = (mixed >> (42 - 6 * index)) & 0x3F
        row = ((six >> 4) & 2) | (six & 1)
        substituted = (substituted << 4) | box[row * 16 + ((six >> 1) & 0xF)]
    return _permute(substituted, _P, 32)


def encrypt_block(key: bytes, block: bytes) -> bytes:
    """DES-encrypt one 8-byte block under an 8-byte key (parity bits ignored)."""
    if len(key) != BLOCK_SIZE or len(block) != BLOCK_SIZE:
        raise ValueError("DES takes an 8-byte key and an 8-byte block")
    state = _permute(int.from_bytes(block, "big"), _IP, 64)
    left, right = state >> 32, state & 0xFFFFFFFF
    for round_key in _round_keys(key):
        left, right = right, left ^ _feistel(right, round_key)
    return _permute((right << 32) | left, _FP, 64).to_bytes(BLOCK_SIZE, "big")


def _reverse_bits(byte: int) -> int:
    return int(f"{byte:08b}"[::-1], 2)


def vnc_key(password: str) -> bytes:
    """The DES key RFB derives from a password: 8 bytes, NUL-padded, each bit-reversed."""
    raw = password.encode("latin-1", errors="replace")[:BLOCK_SIZE].ljust(BLOCK_SIZE, b"\0")
    return bytes(_reverse_bits(byte) for byte in raw)


def vnc_response(password: str, challenge: bytes) -> bytes:
    """The 16 bytes a client holding `password` answers to `challenge`."""
    key = vnc_key(password)
    return b"".join(
        encrypt_block(key, challenge[start : start + BLOCK_SIZE])
        for start in range(0, len(challenge), BLOCK_SIZE)
    )
