"""The configuration parser never crashes: whatever a configuration file holds,
``load_reduction_config``, ``load_tom_config`` and ``load_manager_config`` return
a configuration or raise ConfigError whose text is one line naming the file.

Property tests (hypothesis, derandomized so CI sees the same examples every run)
mutate valid configurations key by key and character by character, and throw
random YAML documents and random bytes at the parsers. Below them, the cases
the fuzzing found, and the YAML security cases: tags that would construct Python
objects, and alias bombs, are refused without being evaluated.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import tracemalloc
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from luigi_phot.config import (ConfigError, load_manager_config, load_reduction_config, load_tom_config,
                               parse_dec, parse_ra)

FUZZ = settings(max_examples=250, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.filter_too_much])

MAX_MESSAGE = 600


# --------------------------------------------------------------------------
# Valid configurations to start from
# --------------------------------------------------------------------------


def reduction_doc(tom_file: Path) -> dict:
    """Every key of reduction_config.yaml set to a valid value."""
    return {
        "target": {"name": "OGLE-2026-BLG-0042", "RA": "17:54:00.054", "Dec": "-29:30:06.11"},
        "photometry": {"aperture_arcsec": 2.0, "annulus_arcsec": [4.0, 6.0], "aperture_fwhm_multiple": 1.2,
                       "reference_image": "frame_0001.fits", "subtract_neighbours": True,
                       "default_zero_point": 25.0, "detection_sigma": 5.0, "max_catalogue_stars": 5000,
                       "target_snap_arcsec": 1.0, "max_alignment_rms_pix": 0.5, "min_matched_stars": 8,
                       "astrometry": "auto", "gaia_cache_file": "gaia_dr3.ecsv",
                       "gaia_tap_url": "https://gea.esac.esa.int/tap-server/tap"},
        "camera": {"gain_e_per_adu": 1.5, "read_noise_e": 7.0, "saturation_adu": 60000, "units": "adu",
                   "pixel_scale_arcsec": 0.389, "filter_name": "ip",
                   "site": {"latitude": -30.17, "longitude": -70.80, "height": 2198.0}},
        "tom": {"upload": True, "config_file": tom_file.name, "data_label": "OGLE-2026-BLG-0042_lsc",
                "create_target": False, "include_flagged": False},
    }


TOM_DOC = {"url": "http://127.0.0.1:8000", "tom_user_id": "pipeline", "tom_password": "secret",
           "timeout_s": 10, "max_retries": 2, "backoff_s": 0.5}


def manager_doc(base: Path) -> dict:
    return {"log_dir": str(base / "logs"), "data_reduction_dir": str(base), "software_dir": str(base),
            "instrument_list": ["sinistro", "qhy"],
            "dataset_selection": {"group": "file", "file": "datasets.txt", "start_date": "2026-07-01",
                                  "end_date": "2026-07-31", "ndays": 3},
            "max_parallel": 3}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("config_fuzz")
    tom = d / "tom_config.yaml"
    tom.write_text(yaml.safe_dump(TOM_DOC))
    tom.chmod(0o600)
    (d / "datasets.txt").write_text("T/sinistro/ip\n")
    return d


def _check(loader, path: Path, *also: Path):
    """Call `loader(path)`: a configuration, or a ConfigError of one line that names
    the file it is about (`path`, or one of `also`: a file `path` refers to)."""
    try:
        return loader(path)
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and "\r" not in message, message
        assert len(message) <= MAX_MESSAGE, message[:300]
        assert message.startswith((str(path),) + tuple(str(p) for p in also)) or " configuration not found" in message \
            or "TOM configuration" in message, message
        return None


# --------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(10 ** 12), max_value=10 ** 12),
    st.integers(min_value=10 ** 300, max_value=10 ** 330),          # overflows float()
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.text(alphabet="0123456789:+-. ", max_size=14),                 # sexagesimal-like
    st.dates(min_value=dt.date(1, 1, 1)),
    st.sampled_from(["", "None", "null", "~", "yes", "no", "on", "17:99:00", "-91:00:00", "1e999",
                     "../../etc/passwd", "/", ".", "a\x00b", "x" * 5000]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12)


def _paths(doc, prefix=()):
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append(prefix + (k,))
            out.extend(_paths(v, prefix + (k,)))
    return out


@st.composite
def mutated(draw, base: dict):
    """`base` with 1-3 random key deletions, value replacements, renames or additions."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if not isinstance(parent, dict) or path[-1] not in parent:
            continue
        op = draw(st.sampled_from(["delete", "replace", "replace", "rename", "add"]))
        if op == "delete":
            del parent[path[-1]]
        elif op == "replace":
            parent[path[-1]] = draw(values)
        elif op == "rename":
            parent[draw(st.text(min_size=1, max_size=12))] = parent.pop(path[-1])
        else:
            parent[draw(st.text(min_size=1, max_size=12))] = draw(values)
    return doc


def _dump(doc) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


@st.composite
def text_edits(draw, text: str):
    """`text` with a few characters inserted, a slice deleted, or cut short."""
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["insert", "delete", "truncate"]))
        pos = draw(st.integers(0, len(text)))
        if op == "insert":
            text = text[:pos] + draw(st.text(alphabet=":-[]{}&*!|>'\"#%@`,?\n\t \\0x", min_size=1, max_size=4)) \
                + text[pos:]
        elif op == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 20)):]
        else:
            text = text[:pos]
    return text


# --------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------


def test_the_valid_starting_points_parse(workdir):
    (workdir / "reduction_config.yaml").write_text(_dump(reduction_doc(workdir / "tom_config.yaml")))
    cfg = load_reduction_config(workdir / "reduction_config.yaml")
    assert cfg.tom.config_file == workdir / "tom_config.yaml" and cfg.camera.units == "adu"
    (workdir / "tom.yaml").write_text(_dump(TOM_DOC))
    assert load_tom_config(workdir / "tom.yaml").max_retries == 2
    (workdir / "manager.yaml").write_text(_dump(manager_doc(workdir)))
    assert load_manager_config(workdir / "manager.yaml").max_parallel == 3


@FUZZ
@given(data=st.data())
def test_reduction_config_key_corruptions(workdir, data):
    doc = data.draw(mutated(reduction_doc(workdir / "tom_config.yaml")))
    path = workdir / "reduction_config.yaml"
    path.write_text(_dump(doc))
    _check(load_reduction_config, path, workdir / "tom_config.yaml")


@FUZZ
@given(data=st.data())
def test_tom_config_key_corruptions(workdir, data):
    path = workdir / "tom.yaml"
    path.write_text(_dump(data.draw(mutated(TOM_DOC))))
    cfg = _check(load_tom_config, path)
    if cfg is not None:
        assert "secret" not in repr(cfg) and "secret" not in str(cfg)


@FUZZ
@given(data=st.data())
def test_manager_config_key_corruptions(workdir, data):
    path = workdir / "manager.yaml"
    path.write_text(_dump(data.draw(mutated(manager_doc(workdir)))))
    _check(load_manager_config, path)


@FUZZ
@given(data=st.data())
def test_text_corruptions_of_every_configuration(workdir, data):
    which = data.draw(st.sampled_from(["reduction", "tom", "manager"]))
    base = {"reduction": reduction_doc(workdir / "tom_config.yaml"), "tom": TOM_DOC,
            "manager": manager_doc(workdir)}[which]
    loader = {"reduction": load_reduction_config, "tom": load_tom_config, "manager": load_manager_config}[which]
    path = workdir / f"{which}_text.yaml"
    path.write_text(data.draw(text_edits(_dump(base))), encoding="utf-8")
    _check(loader, path, workdir / "tom_config.yaml")


@FUZZ
@given(doc=values, raw=st.binary(max_size=300), use_raw=st.booleans())
def test_random_documents_and_bytes(workdir, doc, raw, use_raw):
    path = workdir / "random.yaml"
    if use_raw:
        path.write_bytes(raw)
    else:
        path.write_text(_dump(doc))
    for loader in (load_reduction_config, load_tom_config, load_manager_config):
        _check(loader, path, workdir / "tom_config.yaml")


@FUZZ
@given(value=st.one_of(values, st.text(alphabet="0123456789:+- .hdms'\"°", max_size=16)))
def test_ra_dec_parsers_return_degrees_in_range_or_say_why(value):
    for parse, lo, hi in ((parse_ra, 0.0, 360.0), (parse_dec, -90.0, 90.0)):
        try:
            deg = parse(value)
        except ValueError as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 200
        else:
            assert math.isfinite(deg) and lo <= deg <= hi


# --------------------------------------------------------------------------
# Cases the fuzzing found (each failed before its fix)
# --------------------------------------------------------------------------

VALID = ("target:\n  name: T\n  RA: '17:30:25.5'\n  Dec: '-25:30:30.5'\n"
         "photometry:\n  aperture_arcsec: 2.0\ntom:\n  upload: false\n")


def _error(tmp_path: Path, text: str, loader=load_reduction_config) -> str:
    path = tmp_path / "reduction_config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        loader(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message and len(message) <= MAX_MESSAGE, message[:300]
    return message


def test_number_too_large_for_a_float(tmp_path):
    assert "photometry.aperture_arcsec must be a number" in _error(tmp_path, VALID.replace("2.0", "9" * 400))
    assert "target.RA" in _error(tmp_path, VALID.replace("'17:30:25.5'", "9" * 400))
    assert "annulus_arcsec" in _error(tmp_path, VALID.replace("2.0", f"2.0\n  annulus_arcsec: [4, {'9' * 400}]"))


def test_deeply_nested_document(tmp_path):
    assert "nested" in _error(tmp_path, "target: " + "[" * 5000 + "]" * 5000 + "\n")


def test_impossible_calendar_date(tmp_path):
    (tmp_path / "logs").mkdir()
    text = (f"log_dir: {tmp_path / 'logs'}\ndata_reduction_dir: {tmp_path}\ninstrument_list: [sinistro]\n"
            "dataset_selection:\n  group: date\n  start_date: 2026-13-01\nmax_parallel: 2\n")
    message = _error(tmp_path, text, load_manager_config)
    assert "dataset_selection.start_date '2026-13-01' is not a date" in message


def test_nul_character_in_a_path(tmp_path):
    message = _error(tmp_path, VALID.replace("upload: false", 'upload: true\n  config_file: "a\\0b"'))
    assert "tom.config_file" in message and "NUL" in message


def test_path_too_long_for_the_file_system(tmp_path):
    message = _error(tmp_path, VALID.replace("2.0", "2.0\n  catalogue_file: '" + "c" * 5000 + "'"))
    assert "photometry.catalogue_file" in message


def test_a_long_value_is_shortened_in_the_message(tmp_path):
    message = _error(tmp_path, VALID.replace("2.0", "'" + "x" * 100_000 + "'"))
    assert "photometry.aperture_arcsec must be a number, not 'xxx" in message and len(message) < 300


def test_unquoted_sexagesimal_coordinates_are_read_as_written(tmp_path):
    # YAML 1.1 reads an unquoted 17:30:25.5 as the base-60 number 63025.5
    path = tmp_path / "reduction_config.yaml"
    path.write_text(VALID.replace("'17:30:25.5'", "17:30:25.5").replace("'-25:30:30.5'", "-25:30:30.5"))
    cfg = load_reduction_config(path)
    assert cfg.target.ra_deg == pytest.approx(15 * (17 + 30 / 60 + 25.5 / 3600))
    assert cfg.target.dec_deg == pytest.approx(-(25 + 30 / 60 + 30.5 / 3600))


def test_a_configuration_path_that_is_not_a_regular_file(tmp_path):
    path = tmp_path / "cfg_dir"
    path.mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        load_reduction_config(path)


# --------------------------------------------------------------------------
# Security: YAML is data, never code
# --------------------------------------------------------------------------


@pytest.mark.parametrize("tag", [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
    "!!python/name:os.system",
    "!!python/object:collections.OrderedDict {{}}",
])
def test_python_tags_are_refused_and_never_run(tmp_path, tag):
    marker = tmp_path / "evaluated"
    for text in (tag.format(marker=marker) + "\n",
                 VALID.replace("name: T", "name: " + tag.format(marker=marker))):
        message = _error(tmp_path, text)
        assert "not valid YAML" in message and "python" in message
    assert not marker.exists()


def test_alias_bomb_is_refused_without_being_expanded(tmp_path):
    # nine levels of nine aliases: 387 million strings if expanded
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    text = "\n".join(lines) + "\n" + VALID.replace("upload: false", "upload: *a8")
    tracemalloc.start()
    try:
        message = _error(tmp_path, text)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # refused at the first alias (line 2), before anything was built from it
    assert "aliases (*a0) are not allowed" in message and "line 2" in message, message
    assert peak_bytes < 20_000_000, f"{peak_bytes} bytes allocated: the aliases were expanded"


def test_a_configuration_file_too_large_to_be_one(tmp_path):
    message = _error(tmp_path, VALID + "# " + "x" * 2_000_000 + "\n")
    assert "too large" in message


def test_tom_credentials_never_appear_in_errors(tmp_path):
    path = tmp_path / "tom.yaml"
    path.write_text("url: 'http://u:hunter2@tom.example.org'\ntom_user_id: u\ntom_password: hunter2\n")
    with pytest.raises(ConfigError) as info:
        load_tom_config(path)
    assert "hunter2" not in str(info.value)
    path.write_text("url: http://tom.example.org\ntom_user_id: u\ntom_password: [hunter2]\n")
    with pytest.raises(ConfigError) as info:
        load_tom_config(path)
    assert "hunter2" not in str(info.value)


# --------------------------------------------------------------------------
# Misspelled keys: the message names the key as typed and the key meant
# --------------------------------------------------------------------------

#: One keystroke wrong: a letter typed twice, a letter left out (keys of three letters
#: or more; 'RA' without a letter is no longer recognisably 'RA').
TYPOS = {"doubled": lambda key: key + key[-1], "dropped": lambda key: key[:1] + key[2:]}


def _documents(workdir: Path) -> dict:
    return {"reduction": (load_reduction_config, reduction_doc(workdir / "tom_config.yaml")),
            "tom": (load_tom_config, TOM_DOC), "manager": (load_manager_config, manager_doc(workdir))}


def _renamed(doc: dict, key_path: tuple, new_name: str) -> dict:
    doc = copy.deepcopy(doc)
    parent = doc
    for k in key_path[:-1]:
        parent = parent[k]
    parent[new_name] = parent.pop(key_path[-1])
    return doc


@pytest.mark.parametrize("typo", sorted(TYPOS))
@pytest.mark.parametrize("which", ["reduction", "tom", "manager"])
def test_every_misspelled_key_is_named_with_the_key_meant(workdir, which, typo):
    """Required or optional, section or value, at any depth: a key misspelled by one
    keystroke is reported as the unknown key the user typed, with the key meant."""
    loader, base = _documents(workdir)[which]
    path = workdir / f"typo_{which}.yaml"
    checked = 0
    for key_path in _paths(base):
        name = key_path[-1]
        if typo == "dropped" and len(name) < 3:
            continue
        wrong = TYPOS[typo](name)
        path.write_text(_dump(_renamed(base, key_path, wrong)))
        with pytest.raises(ConfigError) as err:
            loader(path)
        typed, meant = ".".join(key_path[:-1] + (wrong,)), ".".join(key_path)
        assert str(err.value) == f"{path}: unknown key {typed} (did you mean {meant}?)"
        checked += 1
    assert checked >= 5


def test_a_missing_key_with_no_look_alike_is_reported_missing_and_an_unknown_one_lists_the_keys(workdir):
    doc = manager_doc(workdir)
    del doc["max_parallel"]
    doc["colour"] = "blue"
    path = workdir / "manager_missing.yaml"
    path.write_text(_dump(doc))
    with pytest.raises(ConfigError) as err:
        load_manager_config(path)
    assert str(err.value) == f"{path}: missing key max_parallel"
    doc["max_parallel"] = 2
    path.write_text(_dump(doc))
    with pytest.raises(ConfigError) as err:
        load_manager_config(path)
    assert str(err.value) == (f"{path}: unknown key colour (known keys here: data_reduction_dir, dataset_selection, "
                              "instrument_list, log_dir, max_parallel, software_dir)")


def test_distinct_keys_of_a_section_are_never_taken_for_each_others_typos(workdir):
    """A missing required key is reported as a typo of an unknown key that resembles
    it (TYPO_CUTOFF); no two real keys of one section may be that alike."""
    from difflib import SequenceMatcher

    from luigi_phot.config import TYPO_CUTOFF

    # keys the valid documents leave out; the three files' top levels are checked together
    sections: dict[tuple, set] = {("photometry",): {"catalogue_file", "catalogue_mag_column"}, (): {"api_token"}}
    for _, base in _documents(workdir).values():
        for key_path in _paths(base):
            sections.setdefault(key_path[:-1], set()).add(key_path[-1].lower())
    for prefix, keys in sections.items():
        for a in keys:
            for b in keys - {a}:
                assert SequenceMatcher(None, a, b).ratio() < TYPO_CUTOFF, (prefix, a, b)
