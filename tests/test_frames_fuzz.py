"""The frame reader never crashes: whatever a file named like a frame holds,
``read_frame_info`` and ``load_frame`` return a frame or raise FrameError, whose
text is one line naming the file, and never modify the file.

Property tests (hypothesis, derandomized so CI sees the same examples every run)
start from real FITS files - synthetic LCO-like frames written by the generator
(plain and fpack), a real Feder Observatory frame (gzip, int16) and a crop of a
real VLT/ISAAC frame - and corrupt them: header keywords deleted or given random
values of random types, structural keywords (BITPIX, NAXISn, XTENSION, ZCMPTYPE,
...) overwritten in the file's bytes, pixel planes turned NaN, constant, infinite
or of another type or shape, files cut short, garbage bytes written over them or
inserted into them.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from hypothesis import HealthCheck, event, given, settings
from hypothesis.control import currently_in_test_context
from hypothesis import strategies as st

from luigi_phot.config import CameraConfig
from luigi_phot.photometry.frames import Frame, FrameError, FrameInfo, load_frame, read_frame_info
from luigi_phot.synthetic import SyntheticConfig, generate_dataset

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
if not REAL.is_dir():
    REAL = Path("/work/shared/data/real")

FUZZ = settings(max_examples=150, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.filter_too_much, HealthCheck.data_too_large])

#: Keywords the reader looks at (and a few it does not).
KEYWORDS = ["DATE-OBS", "MJD-OBS", "UTSTART", "EXPTIME", "FILTER", "FILTER1", "GAIN", "RDNOISE", "SATURATE",
            "BUNIT", "RLEVEL", "AIRMASS", "SITEID", "LATITUDE", "LONGITUD", "HEIGHT", "CTYPE1", "CTYPE2",
            "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CD1_1", "CD1_2", "CD2_1", "CD2_2", "PIXSCALE",
            "OBSGEO-X", "EXTNAME", "BSCALE", "BZERO", "OBJECT", "EQUINOX", "RADESYS", "BLANK"]
#: Structural keywords, corrupted in the file's bytes (astropy would rewrite them).
STRUCTURAL = ["SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "XTENSION", "EXTEND", "PCOUNT", "GCOUNT",
              "ZIMAGE", "ZCMPTYPE", "ZBITPIX", "ZNAXIS", "ZNAXIS1", "ZNAXIS2", "ZTILE1", "TFORM1", "TFIELDS",
              "NAXIS3", "END"]

ascii_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30)
header_values = st.one_of(
    ascii_text, st.booleans(), st.integers(-(2 ** 62), 2 ** 62),
    st.floats(allow_nan=False, allow_infinity=False), st.floats(min_value=-1e300, max_value=1e300),
    st.complex_numbers(max_magnitude=1e6, allow_nan=False, allow_infinity=False),
    st.sampled_from(["2026-02-30T25:61:00", "2026-07-12", "nan", "inf", "", "  ", "-1", "0", "1e400",
                     "T", "+46:52:00.4", "99:99:99", "RA---XXX", "DEC--TAN-SIP", "electrons", "adu"]))


def _image_index(hdul) -> int:
    names = [h.name for h in hdul]
    if "SCI" in names:
        return names.index("SCI")
    return next(i for i, h in enumerate(hdul) if h.is_image and h.header.get("NAXIS", 0) >= 2)


class Sources(dict):
    """name -> bytes of the uncorrupted files (short repr: hypothesis prints its arguments)."""

    def __repr__(self) -> str:
        return f"Sources({', '.join(self)})"


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Sources:
    """name -> bytes of the uncorrupted files."""
    d = tmp_path_factory.mktemp("frames_fuzz")
    gen = generate_dataset(d / "syn", SyntheticConfig(seed=5, n_frames=2, shape=(96, 128), n_stars=60,
                                                      compress="mixed", n_nights=1, bad_column=None))
    out = Sources((p.name, p.read_bytes()) for p in gen.frame_paths)
    assert {n.endswith(".fz") for n in out} == {True, False}, "need a plain and an fpack frame"
    out["eyuma_thumbnail.fit.gz"] = (REAL / "eyuma_thumbnail.fit.gz").read_bytes()
    with fits.open(REAL / "isaac_psrj1740.fits") as hdul, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        header = hdul[0].header.copy()
        data = hdul[0].data[400:528, 400:560].copy()
        header["CRPIX1"] = header["CRPIX1"] - 400
        header["CRPIX2"] = header["CRPIX2"] - 400
        for key in ("CHECKSUM", "DATASUM"):
            header.remove(key, ignore_missing=True)
        buf = io.BytesIO()
        fits.PrimaryHDU(data, header=header).writeto(buf, output_verify="silentfix")
    out["isaac_crop.fits"] = buf.getvalue()
    return out


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("frames_fuzz_scratch")


# --------------------------------------------------------------------------
# Corruptions
# --------------------------------------------------------------------------


@st.composite
def header_edits(draw):
    key = draw(st.sampled_from(KEYWORDS))
    if draw(st.booleans()):
        return ("delete", key, None)
    return ("set", key, draw(header_values))


data_edits = st.sampled_from(["nan", "zero", "constant", "inf", "huge", "negative", "int8", "uint16", "int32",
                              "int64", "float64", "one_row", "one_column", "cube", "cube1", "vector",
                              "mostly_nan", "tiny"])


@st.composite
def byte_edits(draw):
    kind = draw(st.sampled_from(["truncate", "overwrite", "insert", "card", "card", "zero_tail"]))
    if kind == "card":
        value = draw(st.one_of(st.sampled_from(["-1", "0", "7", "2147483647", "99999999999999999999", "'X'",
                                                "T", "F", "1.5", "", "'IMAGE   '", "'BINTABLE'", "'RICE_1'",
                                                "'GZIP_2'", "'NONE'", "3", "-64", "64"]),
                               ascii_text))
        return (kind, draw(st.sampled_from(STRUCTURAL)), value)
    return (kind, draw(st.floats(0.0, 1.0)), draw(st.binary(min_size=1, max_size=64)))


def _apply_data_edit(data: np.ndarray, edit: str):
    data = np.asarray(data, dtype=np.float32)
    if edit == "nan":
        return np.full_like(data, np.nan)
    if edit == "zero":
        return np.zeros_like(data)
    if edit == "constant":
        return np.full_like(data, 1234.5)
    if edit == "inf":
        out = data.copy()
        out[::2] = np.inf
        return out
    if edit == "huge":
        return np.full_like(data, 3e38) * np.where(np.arange(data.size).reshape(data.shape) % 2, 1, -1)
    if edit == "negative":
        return -data
    if edit in ("int8", "uint16", "int32", "int64", "float64"):
        with np.errstate(invalid="ignore", over="ignore"):
            return np.nan_to_num(data).astype(edit)
    if edit == "one_row":
        return data[:1]
    if edit == "one_column":
        return data[:, :1]
    if edit == "cube":
        return np.stack([data, data])
    if edit == "cube1":
        return data[None]
    if edit == "vector":
        return data.ravel()
    if edit == "mostly_nan":
        out = data.copy()
        out.ravel()[: int(0.9 * out.size)] = np.nan
        return out
    if edit == "tiny":
        return data[:2, :2]
    raise AssertionError(edit)


def _rewrite(raw: bytes, name: str, header_ops, data_op) -> bytes | None:
    """Apply header and data edits with astropy; None when astropy cannot write the result."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hdul = fits.open(io.BytesIO(raw))
            hdul = fits.HDUList([h.copy() for h in hdul])
            idx = _image_index(hdul)
            hdu = hdul[idx]
            for op, key, value in header_ops:
                if op == "delete":
                    hdu.header.remove(key, ignore_missing=True, remove_all=True)
                    if idx != 0:
                        hdul[0].header.remove(key, ignore_missing=True, remove_all=True)
                else:
                    hdu.header[key] = value
            if data_op is not None:
                data = _apply_data_edit(hdu.data, data_op)
                header = hdu.header.copy()
                if isinstance(hdu, fits.CompImageHDU) and data.ndim == 2 and data.dtype.itemsize <= 4 \
                        and min(data.shape) > 1:
                    new = fits.CompImageHDU(data, header=header, name=hdu.name)
                elif idx == 0:
                    new = fits.PrimaryHDU(data, header=header)
                else:
                    new = fits.ImageHDU(data, header=header, name=hdu.name)
                hdul[idx] = new
            buf = io.BytesIO()
            hdul.writeto(buf, output_verify="silentfix")
            out = buf.getvalue()
    except Exception:
        return None
    if name.endswith(".gz"):
        import gzip

        out = gzip.compress(out, mtime=0)
    return out


def _apply_byte_edit(raw: bytes, edit) -> bytes:
    kind, a, b = edit
    if kind == "card":
        keyword, value = a, b
        key = keyword.encode().ljust(8)
        for start in range(0, len(raw) - 79, 80):
            if raw[start:start + 8] == key:
                card = (key + (b"" if keyword == "END" else b"= ") + value.encode()[:70]).ljust(80)[:80]
                return raw[:start] + card + raw[start + 80:]
        return raw
    pos = int(a * len(raw))
    if kind == "truncate":
        return raw[:pos]
    if kind == "overwrite":
        return raw[:pos] + b + raw[pos + len(b):]
    if kind == "insert":
        return raw[:pos] + b + raw[pos:]
    if kind == "zero_tail":
        return raw[:pos] + bytes(len(raw) - pos)
    raise AssertionError(kind)


# --------------------------------------------------------------------------
# The property
# --------------------------------------------------------------------------


def _event(text: str) -> None:
    """Count outcomes (pytest --hypothesis-show-statistics shows the mix)."""
    if currently_in_test_context():
        event(text)


def _read_both(path: Path, camera: CameraConfig | None = None):
    """Both readers; each returns its object or a FrameError of one line naming the file."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    results = []
    for reader in (read_frame_info, load_frame):
        try:
            obj = reader(path, camera)
        except FrameError as exc:
            text = str(exc)
            assert text.startswith(f"{path.name}: "), text
            assert "\n" not in text and "\r" not in text and len(text) < 400, text
            results.append(exc)
            _event(f"{reader.__name__}: FrameError")
            continue
        _event(f"{reader.__name__}: returned")
        assert isinstance(obj, (FrameInfo, Frame))
        info = obj if isinstance(obj, FrameInfo) else obj.info
        assert np.isfinite(info.mjd_start) and np.isfinite(info.exptime_s) and info.exptime_s >= 0
        assert isinstance(info.filter_name, str) and info.filter_name
        if isinstance(obj, Frame):
            assert obj.data_e.dtype == np.float32 and obj.data_e.shape == info.shape
            assert obj.pixel_flags.shape == info.shape
            assert obj.err_e is None or obj.err_e.shape == info.shape
        results.append(obj)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, "the reader modified the file"
    return results


def test_the_uncorrupted_sources_are_frames(sources, scratch):
    for name, raw in sources.items():
        path = scratch / name
        path.write_bytes(raw)
        info, frame = _read_both(path, CameraConfig(filter_name="r", gain_e_per_adu=1.0))
        assert isinstance(frame, Frame), f"{name}: {frame}"


@FUZZ
@given(data=st.data())
def test_header_and_data_corruptions(sources, scratch, data):
    name = data.draw(st.sampled_from(sorted(sources)))
    header_ops = data.draw(st.lists(header_edits(), min_size=0, max_size=4))
    data_op = data.draw(st.one_of(st.none(), data_edits))
    raw = _rewrite(sources[name], name, header_ops, data_op)
    if raw is None:  # astropy itself refused to write that header: nothing to read
        raw = sources[name]
    path = scratch / f"hd_{name}"
    path.write_bytes(raw)
    _read_both(path)


@FUZZ
@given(data=st.data())
def test_byte_level_corruptions(sources, scratch, data):
    name = data.draw(st.sampled_from(sorted(n for n in sources if not n.endswith(".gz"))))
    raw = sources[name]
    for edit in data.draw(st.lists(byte_edits(), min_size=1, max_size=3)):
        raw = _apply_byte_edit(raw, edit)
    path = scratch / f"b_{name}"
    path.write_bytes(raw)
    _read_both(path)


@FUZZ
@given(raw=st.binary(max_size=6000), prefix=st.sampled_from([b"", b"SIMPLE  =                    T",
                                                             b"\x1f\x8b\x08\x00"]),
       suffix=st.sampled_from([".fits", ".fits.fz", ".fits.gz"]))
def test_garbage_named_like_a_frame(scratch, raw, prefix, suffix):
    path = scratch / f"garbage{suffix}"
    path.write_bytes(prefix + raw)
    for result in _read_both(path):
        assert isinstance(result, FrameError)


# --------------------------------------------------------------------------
# Cases the fuzzing found (each failed before its fix)
# --------------------------------------------------------------------------


def _one(scratch: Path, name: str, raw: bytes):
    path = scratch / name
    path.write_bytes(raw)
    return _read_both(path)


def test_unreadable_pixels_of_a_compressed_frame(sources, scratch):
    name = next(n for n in sources if n.endswith(".fz"))
    raw = sources[name]
    # garbage over the middle of the compressed tiles
    broken = _apply_byte_edit(raw, ("overwrite", 0.6, b"\xff" * 64))
    results = _one(scratch, "tiles.fits.fz", broken)
    assert isinstance(results[1], FrameError)


def test_compressed_frame_with_an_unknown_algorithm(sources, scratch):
    name = next(n for n in sources if n.endswith(".fz"))
    broken = _apply_byte_edit(sources[name], ("card", "ZCMPTYPE", "'NOSUCH_1'"))
    results = _one(scratch, "algo.fits.fz", broken)
    assert all(isinstance(r, FrameError) for r in results[1:])


def test_unparsable_header_card(sources, scratch):
    # astropy parses cards lazily: the broken card raises VerifyError on first access
    name = next(n for n in sources if n.endswith("e91.fits"))
    raw = sources[name]
    at = raw.index(b"EXTNAME = 'SCI")
    broken = raw[:at + 12] + b"\x00" + raw[at + 13:]
    results = _one(scratch, "card.fits", broken)
    assert all(isinstance(r, FrameError) for r in results)
    assert "corrupt" in str(results[0])


def test_header_shape_larger_than_the_file(sources, scratch):
    name = next(n for n in sources if n.endswith("e91.fits"))
    broken = _apply_byte_edit(sources[name], ("card", "NAXIS1", "2147483647"))
    results = _one(scratch, "huge.fits", broken)
    assert isinstance(results[1], FrameError)
