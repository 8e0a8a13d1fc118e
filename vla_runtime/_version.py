"""The package version, read from its one home: package.xml (via the installed metadata)."""

import os
import xml.etree.ElementTree as ET
from importlib import metadata


def _read_version() -> str:
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "package.xml")
    if os.path.exists(here):  # source checkout / editable install: package.xml is the truth
        return ET.parse(here).getroot().findtext("version").strip()
    try:
        return metadata.version("vla_runtime")
    except metadata.PackageNotFoundError:  # pragma: no cover - unusual install layouts
        return "0+unknown"


__version__ = _read_version()
