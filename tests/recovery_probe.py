"""A dataflow module for `python -m bytewax.run recovery_probe`: reports what the flow sees.

Writes ``flows.detect.recovery_configured()`` to the file named by ``PROBE_OUT`` at import,
then runs an empty flow.
"""

from __future__ import annotations

import os
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource

from flows.detect import recovery_configured

Path(os.environ["PROBE_OUT"]).write_text(str(recovery_configured()))
flow = Dataflow("recovery_probe")
op.inspect("nothing", op.input("none", flow, TestingSource([])))
