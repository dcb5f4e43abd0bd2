"""Plain requests to a TOM Toolkit server, for arranging and checking what it holds
independently of the client under test (luigi_phot.tom); and the account file a
user writes for it. Used by tests/test_tom.py (the client), tests/test_upload.py
(the UploadToTOM stage) and tests/test_faults.py.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import requests
import yaml
from astropy.time import Time

from luigi_phot.config import TomConfig

__all__ = ["Api", "TokenAuth", "target_id", "tom_points", "write_account"]


class TokenAuth(requests.auth.AuthBase):
    def __init__(self, token: str):
        self.token = token

    def __call__(self, request):
        request.headers["Authorization"] = f"Token {self.token}"
        return request


class Api:
    """Plain requests to the TOM of a tests.tom_server.LocalTom. Token
    authentication: with Basic, the TOM spends about 0.3 s hashing the password
    on every request."""

    def __init__(self, server):
        self.url = server.url
        self.auth = TokenAuth(server.api_token)

    def get_all(self, path: str, **params) -> list[dict]:
        results = []
        while True:
            r = requests.get(self.url + path, params={**params, "limit": 100, "offset": len(results)},
                             auth=self.auth, timeout=30)
            r.raise_for_status()
            page = r.json()
            results.extend(page["results"])
            if not page["next"]:
                return results

    def create_target(self, name: str, aliases: tuple[str, ...] = ()) -> int:
        r = requests.post(self.url + "/api/targets/", auth=self.auth, timeout=30,
                          json={"name": name, "type": "SIDEREAL", "ra": 268.95, "dec": -29.87,
                                "aliases": [{"name": a} for a in aliases]})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def upload(self, target_id: int, csv_path: Path, file_name: str) -> int:
        r = requests.post(self.url + "/api/dataproducts/", auth=self.auth, timeout=30,
                          data={"target": target_id, "data_product_type": "photometry"},
                          files={"file": (file_name, csv_path.read_bytes())})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def products(self, target_id: int, target_name: str) -> dict[int, str]:
        """{product id: stored file name} of one target."""
        return {p["id"]: p["data"].rsplit("/", 1)[-1]
                for p in self.get_all("/api/dataproducts/", target_name=target_name)
                if p["target"] == target_id}

    def points(self, target_id: int) -> list[tuple[str, float, str]]:
        """(timestamp, magnitude, band) of every photometry point of a target, sorted."""
        return sorted((d["timestamp"], d["value"]["brightness"], d["value"]["bandpass"])
                      for d in self.get_all("/api/reduceddatums/", target__id=target_id,
                                            data_type="photometry"))

    def magnitudes(self, target_id: int) -> list[float]:
        return sorted(p[1] for p in self.points(target_id))


def target_id(api: Api, name: str) -> int | None:
    """Id of the target named exactly `name`, or None."""
    found = [t["id"] for t in api.get_all("/api/targets/", name=name) if t["name"] == name]
    return found[0] if found else None


def tom_points(api: Api, target_id: int) -> list[tuple[float, float, str]]:
    """(MJD, magnitude, band) of every photometry point the TOM holds for a target, sorted."""
    return sorted((round(Time(dt.datetime.fromisoformat(timestamp)).mjd, 6), magnitude, band)
                  for timestamp, magnitude, band in api.points(target_id))


def write_account(path: Path, tom: TomConfig, mode: int = 0o600) -> Path:
    """A TOM account file (tom_config.yaml) with tom's fields, created with `mode`."""
    data = {"url": tom.url, "timeout_s": tom.timeout_s, "max_retries": tom.max_retries,
            "backoff_s": tom.backoff_s}
    if tom.api_token:
        data["api_token"] = tom.api_token
    else:
        data.update(tom_user_id=tom.username, tom_password=tom.password)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(data, fh)
    os.chmod(path, mode)  # whatever the umask
    return path
