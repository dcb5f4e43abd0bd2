"""Every configuration file luigi_phot reads is parsed and validated here.

Three files, each into a typed, immutable object:

- ``reduction_config.yaml`` in a dataset's ``red_dir``  -> :class:`ReductionConfig`
- the TOM account file named by ``tom.config_file``    -> :class:`TomConfig`
- the reduction manager's configuration                -> :class:`ManagerConfig`

A problem is raised as :class:`ConfigError` whose text is one line naming the
file, the key and what was expected, for example::

    reduction_config.yaml: target.RA '17:99:00' is not a valid sexagesimal RA

Nothing else in the package reads YAML. YAML is loaded with a safe loader:
no value is ever evaluated as code, aliases (``*name``) are refused, and an
unquoted ``17:30:25.5`` stays the text it looks like (YAML 1.1 would read it
as a base-60 number).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import hashlib
import json
import math
import os
import re
import reprlib
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .names import UnsafeName, safe_token
from .photometry.frames import CameraDefaults

__all__ = [
    "ConfigError",
    "REDUCTION_CONFIG_NAME",
    "TargetConfig",
    "PhotometryConfig",
    "CameraConfig",
    "TomSettings",
    "ReductionConfig",
    "TomConfig",
    "DatasetSelection",
    "ManagerConfig",
    "load_reduction_config",
    "load_tom_config",
    "load_manager_config",
    "parse_ra",
    "parse_dec",
    "example_path",
]

REDUCTION_CONFIG_NAME = "reduction_config.yaml"
_EXAMPLES = Path(__file__).parent / "examples"


def example_path(name: str) -> Path:
    """Path of an example configuration shipped in the package
    (``reduction_config.yaml``, ``manager_config.yaml``, ``tom_config.yaml``)."""
    return _EXAMPLES / name


class ConfigError(ValueError):
    """A configuration file is missing, unreadable or invalid (one-line message)."""


#: A configuration file is a few hundred bytes; anything this large is something else.
MAX_CONFIG_BYTES = 1_000_000

_SHOW = reprlib.Repr()
_SHOW.maxstring = 60
_SHOW.maxother = 60
_SHOW.maxlong = 40
_SHOW.maxlist = _SHOW.maxtuple = _SHOW.maxdict = _SHOW.maxset = 4
_SHOW.maxlevel = 2


def _show(value: Any) -> str:
    """A short, one-line repr of a configuration value for error messages."""
    return _SHOW.repr(value)


def _finite(value: Any) -> float | None:
    """The value as a finite float when it is a (non-boolean) number, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        f = float(value)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _exists(path: Path, kind: str) -> bool:
    """path.is_file() / is_dir() that is False, not an exception, for names the
    file system refuses (too long, not searchable)."""
    try:
        return path.is_file() if kind == "file" else path.is_dir()
    except (OSError, ValueError):
        return False


# --------------------------------------------------------------------------
# Sexagesimal coordinates
# --------------------------------------------------------------------------

#: The shapes of a coordinate written as text: three fields separated by colons or
#: spaces, or marked by unit letters ('17:30:25.5', '-25 30 30.5', '17h30m25.5s',
#: '25°30'30.5"'). astropy's Angle converts them; given other shapes it guesses, and
#: some guesses are silently wrong for a configuration ('17 30 25.5s' is 25.5 seconds
#: to it, '12.5' is 12.5 hours), so the text must have one of these shapes, and Angle
#: is given its three fields with colons.
_SEXAGESIMAL = re.compile(
    r"^\s*([+-])?\s*(\d{1,3})[:\s hHdD°]+(\d{1,2})[:\s mM']+(\d{1,2}(?:\.\d*)?)\s*[sS\"]?\s*$"
)


def _sexagesimal_angle(text: str, unit: str, what: str, shape: str, ranges: str):
    """The astropy Angle of a sexagesimal coordinate (`unit` 'hourangle' or 'deg');
    ValueError saying what is wrong (`what` RA or Dec; its `shape`; its field `ranges`)."""
    import warnings

    from astropy.coordinates import Angle

    m = _SEXAGESIMAL.match(text)
    if m is None:
        raise ValueError(f"is not a valid sexagesimal {what} (expected {shape})")
    sign, first, minutes, seconds = m.groups()
    if what == "RA" and sign == "-":
        raise ValueError(f"is not a valid sexagesimal {what} ({ranges})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")   # 60 seconds or 24 hours: astropy warns and carries over
            return Angle(f"{sign or ''}{first}:{minutes}:{seconds}", unit=unit)
    except (ValueError, ArithmeticError, Warning):   # astropy's IllegalMinuteError and its kin
        raise ValueError(f"is not a valid sexagesimal {what} ({ranges})") from None


def parse_ra(value: Any) -> float:
    """Right ascension in degrees from 'HH:MM:SS.s' (or decimal degrees as a number).

    Raises ValueError with the reason when the value is not a valid RA.
    """
    if isinstance(value, bool):
        raise ValueError("is not a valid sexagesimal RA")
    if isinstance(value, (int, float)):
        deg = _finite(value)
        if deg is None or not 0.0 <= deg < 360.0:
            raise ValueError("is out of range (decimal degrees must be in [0, 360))")
        return deg
    angle = _sexagesimal_angle(str(value), "hourangle", "RA", "'HH:MM:SS.s'",
                               "hours 0-23, minutes and seconds 0-59")
    return 15.0 * float(angle.hour)   # bit for bit the degrees earlier versions computed


def parse_dec(value: Any) -> float:
    """Declination in degrees from '+DD:MM:SS.s' (or decimal degrees as a number)."""
    if isinstance(value, bool):
        raise ValueError("is not a valid sexagesimal Dec")
    if isinstance(value, (int, float)):
        deg = _finite(value)
        if deg is None or not -90.0 <= deg <= 90.0:
            raise ValueError("is out of range (decimal degrees must be in [-90, 90])")
        return deg
    ranges = "degrees -90 to +90, minutes and seconds 0-59"
    deg = float(_sexagesimal_angle(str(value), "deg", "Dec", "'+DD:MM:SS.s'", ranges).degree)
    if abs(deg) > 90.0:
        raise ValueError(f"is not a valid sexagesimal Dec ({ranges})")
    return deg


# --------------------------------------------------------------------------
# Small validation helpers: every error names the file and the dotted key
# --------------------------------------------------------------------------

#: difflib similarity above which a key that is not known is reported as a misspelling
#: of a missing required key ("unknown key max_paralel (did you mean max_parallel?)")
#: rather than the required key as missing. The most alike distinct keys of one
#: section (catalogue_file, catalogue_mag_column) score 0.65.
TYPO_CUTOFF = 0.75
#: Above this, an unknown key's message suggests the nearest known key.
SUGGESTION_CUTOFF = 0.6


class _Section:
    """A mapping from a YAML file, read key by key, remembering which keys were used."""

    def __init__(self, path: Path, data: Any, prefix: str = ""):
        self.path = path
        self.prefix = prefix
        if data is None:
            data = {}
        if not isinstance(data, dict):
            where = prefix.rstrip(".") or "the top level"
            raise self.error(f"{where} must be a mapping of keys to values, not {type(data).__name__}")
        self.data = data
        self.used: set[str] = set()

    def error(self, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {message}")

    def key(self, name: Any) -> str:
        text = str(name)
        if len(text) > 40 or not text.isprintable():
            text = _show(text)
        return f"{self.prefix}{text}"

    def has(self, name: str) -> bool:
        return name in self.data and self.data[name] is not None

    def raw(self, name: str, default: Any = None, required: bool = False) -> Any:
        self.used.add(name)
        if name not in self.data or self.data[name] is None:
            if required:
                typo = self._typo_of(name)
                if typo is not None:
                    raise self.error(f"unknown key {self.key(typo)} (did you mean {self.key(name)}?)")
                raise self.error(f"missing key {self.key(name)}")
            return default
        return self.data[name]

    def _typo_of(self, name: str) -> Any:
        """The key of this section that looks like a misspelling of `name` (not a key
        read already), or None. Distinct keys of one section are less alike than this
        cutoff (test_config_fuzz checks it), so a legitimate key is never taken for a typo."""
        unread = {str(k).lower(): k for k in self.data if k not in self.used}
        match = difflib.get_close_matches(name.lower(), list(unread), n=1, cutoff=TYPO_CUTOFF)
        return unread[match[0]] if match else None

    def section(self, name: str, required: bool = False) -> "_Section":
        value = self.raw(name, required=required)
        return _Section(self.path, value, f"{self.key(name)}.")

    def string(self, name: str, default: str | None = None, required: bool = False) -> str | None:
        value = self.raw(name, default, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.error(f"{self.key(name)} must be a string, not {type(value).__name__}")
        text = str(value).strip()
        if required and not text:
            raise self.error(f"{self.key(name)} must not be empty")
        return text

    def boolean(self, name: str, default: bool | None = None, required: bool = False) -> bool | None:
        value = self.raw(name, default, required)
        if value is None or isinstance(value, bool):
            return value
        raise self.error(f"{self.key(name)} must be true or false, not {_show(value)}")

    def number(self, name: str, default: float | None = None, required: bool = False,
               minimum: float | None = None, maximum: float | None = None,
               exclusive_minimum: bool = False, integer: bool = False) -> float | int | None:
        value = self.raw(name, default, required)
        if value is None:
            return None
        kind = "an integer" if integer else "a number"
        number = _finite(value)
        if number is None or (integer and not number.is_integer()):
            raise self.error(f"{self.key(name)} must be {kind}, not {_show(value)}")
        value = int(number) if integer else number
        if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
            rel = ">" if exclusive_minimum else ">="
            raise self.error(f"{self.key(name)} must be {rel} {minimum:g}, not {_show(value)}")
        if maximum is not None and value > maximum:
            raise self.error(f"{self.key(name)} must be <= {maximum:g}, not {_show(value)}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str | None = None,
               required: bool = False) -> str | None:
        value = self.string(name, default, required)
        if value is None:
            return None
        if value.lower() not in choices:
            raise self.error(f"{self.key(name)} must be one of {', '.join(choices)}, not {_show(value)}")
        return value.lower()

    def path_value(self, name: str, base: Path, required: bool = False) -> Path | None:
        text = self.string(name, required=required)
        if text is None or text == "" or text == "None":
            if required:
                raise self.error(f"missing key {self.key(name)}")
            return None
        if "\x00" in text:
            raise self.error(f"{self.key(name)} must not contain a NUL character")
        p = Path(os.path.expanduser(text))
        return p if p.is_absolute() else (base / p)

    def finish(self) -> None:
        """Unknown keys are an error: a typo must not silently fall back to a default."""
        unknown = sorted(set(map(str, self.data)) - self.used)
        if unknown:
            raise self.error(f"unknown key {self.key(unknown[0])} ({self.suggestion(unknown[0])})")

    def suggestion(self, unknown: str) -> str:
        """'did you mean <the nearest known key>?', or the list of known keys when none is near."""
        known = {k.lower(): k for k in self.used}
        match = difflib.get_close_matches(unknown.lower(), list(known), n=1, cutoff=SUGGESTION_CUTOFF)
        if match:
            return f"did you mean {self.key(known[match[0]])}?"
        return f"known keys here: {', '.join(sorted(self.used))}"


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (plain data only: a ``!!python/...`` tag is an error)
    that also refuses aliases - a configuration needs none, and nested aliases
    expand into billions of values ('billion laughs') - and keys given twice (YAML
    would silently keep the last value), and keeps values that look sexagesimal
    (17:30:25.5) as text instead of base-60 numbers."""

    def construct_mapping(self, node, deep=False):
        """A key given twice is an error (YAML itself would silently keep the last value)."""
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:   # an unhashable key: the constructor says so itself
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {_show(key)}: each key may be given once", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"aliases (*{event.anchor}) are not allowed in a configuration file",
                event.start_mark)
        return super().compose_node(parent, index)


def _timestamp_or_text(loader, node):
    """A date as a date, and an impossible one (2026-13-01) as the text written."""
    try:
        return yaml.SafeLoader.construct_yaml_timestamp(loader, node)
    except (ValueError, OverflowError):
        return loader.construct_scalar(node)


_ConfigLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_or_text)
_ConfigLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first in "+-0123456789":
    _ConfigLoader.yaml_implicit_resolvers.setdefault(_first, []).insert(
        0, ("tag:yaml.org,2002:str", re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")))


def _read_yaml(path: Path, what: str) -> Any:
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise OverflowError
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: {what} is a directory, not a file") from None
    except PermissionError:
        raise ConfigError(f"{path}: {what} cannot be read (permission denied)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: {what} is not a text file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {what} cannot be read ({exc.strerror})") from None
    except OverflowError:
        raise ConfigError(f"{path}: {what} is larger than {MAX_CONFIG_BYTES} bytes, too large for a "
                          "configuration file") from None
    except ValueError:  # a NUL character in the path
        raise ConfigError(f"{_show(str(path))}: not a usable file name") from None
    try:
        data = yaml.load(text, Loader=_ConfigLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or "syntax error").split())
        raise ConfigError(f"{path}: not valid YAML{where} ({problem[:200]})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML (nested too deeply)") from None
    except (ValueError, OverflowError, TypeError) as exc:  # a value PyYAML cannot construct
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())[:200]})") from None
    if data is None:
        raise ConfigError(f"{path}: {what} is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {what} must be a YAML mapping of keys to values, not {type(data).__name__}")
    return data


def _digest(obj: Any) -> str:
    """Stable short hash of a JSON-able object (used as a results key)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------
# reduction_config.yaml
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetConfig:
    name: str
    ra_deg: float
    dec_deg: float


@dataclass(frozen=True)
class PhotometryConfig:
    """How to measure. Radii are in arcsec here; tasks convert with each frame's pixel scale."""

    aperture_arcsec: float
    #: When set, each frame's aperture radius is this multiple of its measured FWHM
    #: (``aperture_arcsec`` is then only the reference frame's radius).
    aperture_fwhm_multiple: float | None = None
    #: Sky annulus inner and outer radii; default 2x and 3x the aperture radius.
    annulus_arcsec: tuple[float, float] | None = None
    reference_image: str | None = None
    #: Subtract neighbours' modelled light before the aperture sums (crowded fields).
    subtract_neighbours: bool = True
    #: Optional catalogue (CSV or ECSV with ra, dec [deg] and optionally a magnitude).
    catalogue_file: Path | None = None
    catalogue_mag_column: str | None = None
    #: Magnitude zero point used when no catalogue calibrates it:
    #: mag = zero_point - 2.5 log10(flux in electron/s on the reference frame's scale).
    default_zero_point: float = 25.0
    #: Detection threshold on the reference frame, in sigma of the smoothed sky noise.
    detection_sigma: float = 5.0
    #: Upper limit on catalogue size (brightest kept).
    max_catalogue_stars: int = 60000
    #: Override of the target match radius (arcsec). None: automatic, from the positional
    #: uncertainty (coordinates and reference WCS) and the reference PSF (identification.py).
    target_snap_arcsec: float | None = None
    #: Source of the reference frame's absolute astrometry: auto (catalogue file, then Gaia
    #: DR3, then the header WCS with a warning), gaia, catalogue or header.
    astrometry: str = "auto"
    #: Gaia DR3 query cache; None: photometry/gaia_dr3.ecsv in the dataset. A shared path lets
    #: datasets of the same field reuse one query.
    gaia_cache_file: Path | None = None
    #: The Gaia archive's TAP service (its synchronous endpoint is <url>/sync).
    gaia_tap_url: str = "https://gea.esac.esa.int/tap-server/tap"
    #: Largest accepted alignment residual RMS (pixels) and smallest number of matched stars.
    max_alignment_rms_pix: float = 0.5
    min_matched_stars: int = 8

    def annulus(self) -> tuple[float, float]:
        if self.annulus_arcsec is not None:
            return self.annulus_arcsec
        return (2.0 * self.aperture_arcsec, 3.0 * self.aperture_arcsec)


#: The camera section: the photometry's own type (photometry/frames.py), so that the
#: science imports nothing of the configuration.
CameraConfig = CameraDefaults


@dataclass(frozen=True)
class TomSettings:
    upload: bool
    config_file: Path | None
    data_label: str
    #: Create the target on the TOM from the dataset's RA/Dec when it is missing.
    create_target: bool = False
    #: Upload flagged points too (they are always in the .ecsv light curve).
    include_flagged: bool = False
    #: The TOM's address from the account file (None when not read): pointing the
    #: same account file at another TOM makes the next run upload there.
    url: str | None = None


@dataclass(frozen=True)
class ReductionConfig:
    path: Path
    target: TargetConfig
    photometry: PhotometryConfig
    camera: CameraConfig
    tom: TomSettings

    @property
    def red_dir(self) -> Path:
        return self.path.parent

    # Results keys: a configuration change invalidates what it affects, nothing else.
    def catalogue_key(self) -> str:
        p = self.photometry
        cat = None
        if p.catalogue_file is not None:
            try:
                st = p.catalogue_file.stat()
                cat = [str(p.catalogue_file), st.st_size, st.st_mtime_ns, p.catalogue_mag_column]
            except OSError:
                cat = [str(p.catalogue_file)]
        return _digest({
            "target": [self.target.ra_deg, self.target.dec_deg],
            "reference_image": p.reference_image,
            "detection_sigma": p.detection_sigma,
            "max_catalogue_stars": p.max_catalogue_stars,
            "target_snap_arcsec": p.target_snap_arcsec,
            "catalogue": cat,
            "astrometry": [p.astrometry, str(p.gaia_cache_file), p.gaia_tap_url],
            "camera": dataclasses.asdict(self.camera),
        })

    def measurement_key(self) -> str:
        p = self.photometry
        return _digest({
            "catalogue": self.catalogue_key(),
            "aperture": [p.aperture_arcsec, p.aperture_fwhm_multiple, list(p.annulus())],
            "subtract_neighbours": p.subtract_neighbours,
            "alignment": [p.max_alignment_rms_pix, p.min_matched_stars],
        })

    def lightcurve_key(self) -> str:
        return _digest({
            "measurement": self.measurement_key(),
            "name": self.target.name,
            "zero_point": self.photometry.default_zero_point,
        })

    def tom_key(self) -> str:
        t = self.tom
        return _digest({"upload": t.upload, "config": str(t.config_file), "url": t.url, "label": t.data_label,
                        "create": t.create_target, "flagged": t.include_flagged})

    def fingerprint_key(self) -> str:
        return _digest({"lightcurve": self.lightcurve_key(), "tom": self.tom_key()})


def _astrometry_keys(p: _Section, base: Path, cat_file: Path | None) -> dict:
    """photometry.astrometry, gaia_cache_file and gaia_tap_url (see PhotometryConfig)."""
    source = p.choice("astrometry", ("auto", "gaia", "catalogue", "header"), "auto")
    if source == "catalogue" and cat_file is None:
        raise p.error("photometry.astrometry is 'catalogue' but photometry.catalogue_file is not set")
    cache = p.path_value("gaia_cache_file", base)
    if cache is not None and _exists(cache, "dir"):
        raise p.error(f"photometry.gaia_cache_file {_show(str(cache))} is a directory, not a file")
    url = p.string("gaia_tap_url", PhotometryConfig.gaia_tap_url)
    if not re.fullmatch(r"https?://[^\s/@]+(/\S*)?", url):
        raise p.error(f"photometry.gaia_tap_url {_show(url)} must be an http:// or https:// address")
    return {"astrometry": source, "gaia_cache_file": cache, "gaia_tap_url": url.rstrip("/")}


def _header_text(section: _Section, name: str) -> str | None:
    """A configured value written into FITS headers: printable ASCII, at most 68 characters."""
    value = section.string(name)
    if value is not None and not (value.isascii() and value.isprintable() and len(value) <= 68):
        raise section.error(f"{section.key(name)} {_show(value)} must be printable ASCII of at most 68 characters "
                            "(it is written into FITS headers)")
    return value


def _file_name_part(section: _Section, name: str, what: str, required: bool = False) -> str | None:
    """A configured value that becomes part of file names: a safe token as it is
    (names.safe_token: letters, digits, _ . + -; no leading dot; bounded length)."""
    value = section.string(name, required=required)
    if value is None:
        return None
    try:
        return safe_token(value, what, section.path)
    except UnsafeName as exc:
        raise ConfigError(str(exc)) from None


def load_reduction_config(path: str | os.PathLike, check_tom_file: bool = True) -> ReductionConfig:
    """Parse and validate a dataset's ``reduction_config.yaml``.

    Relative paths inside it (``tom.config_file``, ``photometry.catalogue_file``)
    are taken relative to the file's own directory. With ``check_tom_file`` the TOM
    account file it names is read too (an upload must fail before any work starts).
    """
    path = Path(path)
    top = _Section(path, _read_yaml(path, "reduction configuration"))
    target = _target_section(top.section("target", required=True))
    phot = _photometry_section(top.section("photometry", required=True), path.parent)
    camera = _camera_section(top.section("camera"))
    tom = _tom_section(top.section("tom", required=True), path.parent, target.name, check_tom_file)
    top.finish()
    return ReductionConfig(path=path, target=target, photometry=phot, camera=camera, tom=tom)


def _target_section(t: _Section) -> TargetConfig:
    name = _file_name_part(t, "name", "target.name", required=True)
    ra_raw = t.raw("RA", required=True)
    dec_raw = t.raw("Dec", required=True)
    try:
        ra = parse_ra(ra_raw)
    except ValueError as exc:
        raise t.error(f"target.RA {_show(ra_raw)} {exc}") from None
    try:
        dec = parse_dec(dec_raw)
    except ValueError as exc:
        raise t.error(f"target.Dec {_show(dec_raw)} {exc}") from None
    t.finish()
    return TargetConfig(name=name, ra_deg=ra, dec_deg=dec)


def _photometry_section(p: _Section, base: Path) -> PhotometryConfig:
    aperture = p.number("aperture_arcsec", required=True, minimum=0.0, exclusive_minimum=True, maximum=120.0)
    annulus = p.raw("annulus_arcsec")
    if annulus is not None:
        if (not isinstance(annulus, (list, tuple)) or len(annulus) != 2
                or not all(_finite(v) is not None for v in annulus)):
            raise p.error("photometry.annulus_arcsec must be a list of two numbers [inner, outer]")
        annulus = (_finite(annulus[0]), _finite(annulus[1]))
        if not (aperture <= annulus[0] < annulus[1]):
            raise p.error("photometry.annulus_arcsec must satisfy aperture_arcsec <= inner < outer, "
                          f"not {list(annulus)}")
    fwhm_multiple = p.number("aperture_fwhm_multiple", minimum=0.3, maximum=10.0)
    ref = p.string("reference_image")
    if ref in ("", "None"):
        ref = None
    if ref is not None and (os.sep in ref or ref in (".", "..")):
        raise p.error(f"photometry.reference_image {_show(ref)} must be a file name inside red_dir, not a path")
    cat_file = p.path_value("catalogue_file", base)
    if cat_file is not None and not _exists(cat_file, "file"):
        raise p.error(f"photometry.catalogue_file {_show(str(cat_file))} does not exist")
    phot = PhotometryConfig(
        aperture_arcsec=aperture,
        aperture_fwhm_multiple=fwhm_multiple,
        annulus_arcsec=annulus,
        reference_image=ref,
        subtract_neighbours=p.boolean("subtract_neighbours", True),
        catalogue_file=cat_file,
        catalogue_mag_column=p.string("catalogue_mag_column"),
        default_zero_point=p.number("default_zero_point", 25.0, minimum=0.0, maximum=40.0),
        detection_sigma=p.number("detection_sigma", 5.0, minimum=2.0, maximum=100.0),
        max_catalogue_stars=p.number("max_catalogue_stars", 60000, minimum=10, integer=True),
        target_snap_arcsec=p.number("target_snap_arcsec", None, minimum=0.0, maximum=30.0),
        **_astrometry_keys(p, base, cat_file),
        max_alignment_rms_pix=p.number("max_alignment_rms_pix", 0.5, minimum=0.01, maximum=10.0),
        min_matched_stars=p.number("min_matched_stars", 8, minimum=3, integer=True),
    )
    p.finish()
    return phot


def _camera_section(c: _Section) -> CameraConfig:
    site = None
    if c.raw("site") is not None:  # latitude (deg), longitude (deg east), height (m)
        s = c.section("site")
        site = (s.number("latitude", required=True, minimum=-90.0, maximum=90.0),
                s.number("longitude", required=True, minimum=-360.0, maximum=360.0),
                s.number("height", required=True, minimum=-1000.0, maximum=10000.0))
        s.finish()
    camera = CameraConfig(
        gain_e_per_adu=c.number("gain_e_per_adu", minimum=0.0, exclusive_minimum=True),
        read_noise_e=c.number("read_noise_e", minimum=0.0),
        saturation_adu=c.number("saturation_adu", minimum=0.0, exclusive_minimum=True),
        units=c.choice("units", ("auto", "adu", "electrons"), "auto"),
        pixel_scale_arcsec=c.number("pixel_scale_arcsec", minimum=0.0, exclusive_minimum=True, maximum=3600.0),
        filter_name=_header_text(c, "filter_name"),
        site=site,
    )
    c.finish()
    return camera


def _tom_section(tm: _Section, base: Path, target_name: str, check_tom_file: bool) -> TomSettings:
    upload = tm.boolean("upload", required=True)
    tom_file = tm.path_value("config_file", base)
    label = _file_name_part(tm, "data_label", "tom.data_label") or target_name
    create = tm.boolean("create_target", False)
    flagged = tm.boolean("include_flagged", False)
    tm.finish()
    tom_url = None
    if upload:
        if tom_file is None:
            raise tm.error("tom.config_file is required when tom.upload is true")
        if check_tom_file:
            tom_url = load_tom_config(tom_file).url  # fail before any work starts
    return TomSettings(upload=upload, config_file=tom_file, data_label=label, create_target=create,
                       include_flagged=flagged, url=tom_url)


# --------------------------------------------------------------------------
# TOM account file
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class TomConfig:
    """A TOM Toolkit account. The secret never appears in repr() or str()."""

    path: Path
    url: str
    username: str | None
    password: str | None = field(default=None, repr=False)
    api_token: str | None = field(default=None, repr=False)
    timeout_s: float = 30.0
    max_retries: int = 4
    #: Wait before the first retry; each further retry waits twice as long.
    backoff_s: float = 1.0
    #: Warning text when the file can be read by other users (None when private).
    permission_warning: str | None = None

    def __str__(self) -> str:
        return f"TomConfig(url={self.url!r}, user={self.username!r})"


def load_tom_config(path: str | os.PathLike) -> TomConfig:
    """Parse the TOM account file (keys ``url``, ``tom_user_id``, ``tom_password``
    or ``api_token``; optional ``timeout_s``, ``max_retries``, ``backoff_s``)."""
    path = Path(path)
    s = _Section(path, _read_yaml(path, "TOM configuration"))
    url = s.string("url", required=True)
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
        raise s.error(f"url {_show(url)} must start with http:// or https://")
    if "@" in url.split("/")[2]:
        # Not echoed: the text before '@' is a password. Credentials in the URL
        # would also end up in every message that names the TOM.
        raise s.error("url must not contain a user name or password "
                      "(use tom_user_id and tom_password, or api_token)")
    user = s.string("tom_user_id")
    password = s.raw("tom_password")
    token = s.raw("api_token")
    if password is not None and not isinstance(password, (str, int)):
        raise s.error("tom_password must be a string")
    if token is not None and not isinstance(token, str):
        raise s.error("api_token must be a string")
    cfg_timeout = s.number("timeout_s", 30.0, minimum=0.1, exclusive_minimum=True, maximum=600)
    retries = s.number("max_retries", 4, minimum=0, maximum=20, integer=True)
    backoff = s.number("backoff_s", 1.0, minimum=0.0, maximum=60)
    s.finish()  # before the check below: a misspelled tom_password is named as the typo it is
    if token is None and (user is None or password is None):
        raise s.error("needs tom_user_id and tom_password, or api_token")
    warning = None
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            warning = (f"{path}: TOM configuration holds credentials but can be read by other users "
                       f"(mode {stat.S_IMODE(mode):o}); run: chmod 600 {path}")
    except OSError:
        pass
    return TomConfig(path=path, url=url.rstrip("/"), username=user,
                     password=None if password is None else str(password),
                     api_token=token, timeout_s=cfg_timeout, max_retries=retries, backoff_s=backoff,
                     permission_warning=warning)


# --------------------------------------------------------------------------
# Reduction manager
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSelection:
    group: str                    # all | date | recent | file
    file: Path | None = None
    start_date: dt.date | None = None
    end_date: dt.date | None = None
    ndays: float | None = None


@dataclass(frozen=True)
class ManagerConfig:
    path: Path
    log_dir: Path
    data_reduction_dir: Path
    software_dir: Path | None     # informational only
    instrument_list: tuple[str, ...]
    selection: DatasetSelection
    max_parallel: int


def _date(section: _Section, name: str) -> dt.date | None:
    value = section.raw(name)
    if value is None or (isinstance(value, str) and value.strip() in ("", "None", "none", "null")):
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.datetime.strptime(str(value).strip(), "%Y-%m-%d").date()
    except ValueError:
        raise section.error(f"{section.key(name)} {_show(value)} is not a date in %Y-%m-%d form") from None


def load_manager_config(path: str | os.PathLike) -> ManagerConfig:
    """Parse the reduction manager configuration (keys of the workflow spec)."""
    path = Path(path)
    base = path.parent
    top = _Section(path, _read_yaml(path, "reduction manager configuration"))
    log_dir = top.path_value("log_dir", base, required=True)
    if not _exists(log_dir, "dir") and (_exists(log_dir, "file") or len(str(log_dir)) > 4000
                                        or any(len(p) > 255 for p in log_dir.parts)):
        raise top.error(f"log_dir {_show(str(log_dir))} is not a directory")
    red = top.path_value("data_reduction_dir", base, required=True)
    if not _exists(red, "dir"):
        raise top.error(f"data_reduction_dir {_show(str(red))} is not a directory")
    software = top.path_value("software_dir", base)
    instruments = top.raw("instrument_list", required=True)
    if isinstance(instruments, str):
        instruments = [instruments]
    if (not isinstance(instruments, list) or not instruments
            or not all(isinstance(i, str) and i.strip() for i in instruments)):
        raise top.error("instrument_list must be a non-empty list of instrument directory names")
    for inst in instruments:
        if "/" in inst or inst in (".", ".."):
            raise top.error(f"instrument_list entry {_show(inst)} must be a directory name, not a path")
    sel = top.section("dataset_selection", required=True)
    group = sel.choice("group", ("all", "date", "recent", "file"), required=True)
    sel_file = sel.path_value("file", base)
    start = _date(sel, "start_date")
    end = _date(sel, "end_date")
    ndays = sel.number("ndays", None, minimum=0.0)
    sel.finish()
    if group == "file":
        if sel_file is None:
            raise sel.error("dataset_selection.file is required when group is 'file'")
        if not _exists(sel_file, "file"):
            raise sel.error(f"dataset_selection.file {_show(str(sel_file))} does not exist")
    if group == "date":
        if start is None and end is None:
            raise sel.error("dataset_selection.start_date or end_date is required when group is 'date'")
        if start is not None and end is not None and start > end:
            raise sel.error(f"dataset_selection.start_date {start} is after end_date {end}")
    if group == "recent" and not ndays:
        raise sel.error("dataset_selection.ndays must be > 0 when group is 'recent'")
    max_parallel = top.number("max_parallel", required=True, minimum=1, maximum=1024, integer=True)
    top.finish()
    return ManagerConfig(
        path=path, log_dir=log_dir, data_reduction_dir=red, software_dir=software,
        instrument_list=tuple(i.strip() for i in instruments),
        selection=DatasetSelection(group=group, file=sel_file, start_date=start, end_date=end, ndays=ndays),
        max_parallel=max_parallel,
    )
