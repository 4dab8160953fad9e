"""HPACK decoding (RFC 7541) in `proxy.codec.h2`: the Appendix C examples, block by
block with the dynamic table carried over, and every malformed-block rule the decoder
must turn into a COMPRESSION_ERROR."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.codec.h2 import Decoder, FieldEncoder, HeaderListTooLarge, HpackError, NeverIndexed, huffman_decode


def _hex(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", ""))


def _table(dec: Decoder) -> list[tuple[bytes, bytes]]:
    return list(reversed(dec._table))  # newest first, as the RFC prints it


REQ1 = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"www.example.com")]
REQ2 = [*REQ1, (b"cache-control", b"no-cache")]
REQ3 = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/index.html"),
        (b":authority", b"www.example.com"), (b"custom-key", b"custom-value")]
DATE1 = b"Mon, 21 Oct 2013 20:13:21 GMT"
DATE2 = b"Mon, 21 Oct 2013 20:13:22 GMT"
LOC = b"https://www.example.com"
COOKIE = b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
RESP1 = [(b":status", b"302"), (b"cache-control", b"private"), (b"date", DATE1), (b"location", LOC)]
RESP2 = [(b":status", b"307"), (b"cache-control", b"private"), (b"date", DATE1), (b"location", LOC)]
RESP3 = [(b":status", b"200"), (b"cache-control", b"private"), (b"date", DATE2), (b"location", LOC),
         (b"content-encoding", b"gzip"), (b"set-cookie", COOKIE)]


def test_c2_single_representations() -> None:
    dec = Decoder()
    assert dec.decode(_hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572")) == [
        (b"custom-key", b"custom-header")]
    assert _table(dec) == [(b"custom-key", b"custom-header")] and dec._size == 55
    dec = Decoder()
    assert dec.decode(_hex("040c 2f73 616d 706c 652f 7061 7468")) == [(b":path", b"/sample/path")]
    assert dec._table == []
    out = Decoder().decode(_hex("1008 7061 7373 776f 7264 0673 6563 7265 74"))
    assert out == [(b"password", b"secret")] and isinstance(out[0][1], NeverIndexed)
    assert Decoder().decode(b"\x82") == [(b":method", b"GET")]


@pytest.mark.parametrize(
    ("blocks", "sizes"),
    [
        (  # C.3: requests, no Huffman
            ["8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
             "8286 84be 5808 6e6f 2d63 6163 6865",
             "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65"],
            [57, 110, 164],
        ),
        (  # C.4: the same requests, Huffman-coded
            ["8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
             "8286 84be 5886 a8eb 1064 9cbf",
             "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"],
            [57, 110, 164],
        ),
    ],
)
def test_c3_c4_requests(blocks: list[str], sizes: list[int]) -> None:
    dec = Decoder()
    for block, want, size in zip(blocks, [REQ1, REQ2, REQ3], sizes, strict=True):
        assert dec.decode(_hex(block)) == want
        assert dec._size == size
    assert _table(dec) == [(b"custom-key", b"custom-value"), (b"cache-control", b"no-cache"),
                           (b":authority", b"www.example.com")]


C5 = [
    "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a"
    " 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
    "4803 3330 37c1 c0bf",
    "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04"
    " 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49"
    " 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31",
]
C6 = [
    "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e"
    " 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
    "4883 640e ffc1 c0bf",
    "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7"
    " 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed"
    " 4ee5 b106 3d50 07",
]


@pytest.mark.parametrize("blocks", [C5, C6], ids=["C.5", "C.6"])
def test_c5_c6_responses_with_eviction(blocks: list[str]) -> None:
    """The examples run with a 256-byte table, so entries are evicted along the way."""
    dec = Decoder()
    dec._max_size = 256  # as if a size update to 256 had been received
    for block, want, size in zip(blocks, [RESP1, RESP2, RESP3], [222, 222, 215], strict=True):
        assert dec.decode(_hex(block)) == want
        assert dec._size == size
    assert _table(dec) == [(b"set-cookie", COOKIE), (b"content-encoding", b"gzip"), (b"date", DATE2)]


@pytest.mark.parametrize(
    "block",
    [
        "80",  # index 0 (§6.1)
        "be",  # index 62 with an empty dynamic table (§2.3.3)
        "7e 01 61",  # literal whose name index (62) is beyond the table
        "82 20",  # size update after a field (§4.2)
        "3f e2 1f",  # size update to 4097, above SETTINGS_HEADER_TABLE_SIZE
        "04 05 2f 61",  # string longer than the block
        "04",  # truncated
        "ff ff ff ff ff ff 01",  # integer overflow
        "04 81 ff",  # Huffman: 8 bits of padding (§5.2)
        "04 81 00",  # Huffman: padding not all ones (a zero-bit code prefix)
        "04 84 ff ff ff ff",  # Huffman: EOS (30 ones) in the string
    ],
)
def test_malformed_blocks_are_compression_errors(block: str) -> None:
    with pytest.raises(HpackError):
        Decoder().decode(_hex(block))


def test_size_update_shrinks_and_an_oversized_entry_empties_the_table() -> None:
    dec = Decoder()
    dec.decode(_hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"))
    dec.decode(b"\x20")  # size 0: evicts everything
    assert dec._table == [] and dec._size == 0
    dec.decode(b"\x3f\x11")  # back to 48: smaller than the 55-byte entry below
    dec.decode(_hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"))
    assert dec._table == [] and dec._size == 0


def test_header_list_limit() -> None:
    dec = Decoder(max_header_list_size=100)
    dec.decode(hpack.Encoder().encode([(b"a", b"x" * 60)]))
    with pytest.raises(HeaderListTooLarge):
        Decoder(max_header_list_size=100).decode(hpack.Encoder().encode([(b"a", b"x" * 70)]))


fields = st.lists(
    st.tuples(st.binary(min_size=1, max_size=20).map(bytes.lower), st.binary(max_size=40)),
    max_size=12,
)


@given(st.lists(fields, min_size=1, max_size=6), st.booleans())
def test_agrees_with_hpack_on_its_encodings(sections: list[list[tuple[bytes, bytes]]], huffman: bool) -> None:
    """hpack's encoder (dynamic table, Huffman or not) against our decoder, section after
    section on one connection; and our encoder against hpack's decoder."""
    enc, dec = hpack.Encoder(), Decoder()
    ours, theirs = FieldEncoder(), hpack.Decoder()
    for section in sections:
        assert dec.decode(enc.encode(section, huffman=huffman)) == section
        assert [tuple(f) for f in theirs.decode(ours.encode(section), raw=True)] == section


@given(st.binary(max_size=64))
def test_huffman_round_trip(data: bytes) -> None:
    encoded = hpack.huffman.HuffmanEncoder(
        hpack.huffman_constants.REQUEST_CODES, hpack.huffman_constants.REQUEST_CODES_LENGTH
    ).encode(data)
    assert huffman_decode(encoded) == data
