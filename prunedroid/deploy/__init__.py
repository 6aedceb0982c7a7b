"""Deployment: the format registry (formats), ExecuTorch lowering (pte), exporting any model to every registered
format with each file checked in its own runtime (export), the sidecar that describes an export (sidecar) and model
files from outside loaded first in a child process (probe)."""
