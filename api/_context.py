"""What every handler needs, built once per app and kept in ``app.state.ctx``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from api._metrics import ApiMetrics
from api._store import Store
from api._stream import Broadcaster
from flows.settings import Settings


@dataclass
class Context:
    """Settings, database, live-stream broadcaster, metrics and the model registry root."""

    settings: Settings
    store: Store
    broadcaster: Broadcaster
    metrics: ApiMetrics
    registry_root: Path
    registry_writable: bool
