"""Ollama API emulator: a TEST DOUBLE used by the test suite and the Molecule scenarios.

It is not Ollama and runs no model. It speaks Ollama's documented HTTP API well enough for
the companion's analysis worker and the `ollama` Ansible role to be tested against a real
HTTP server, and lets tests inject faults. Nothing under `service/` may import it.
"""

from __future__ import annotations

from .emulator import EMULATOR_VERSION, FAULT_KINDS, OllamaEmulator

__all__ = ["EMULATOR_VERSION", "FAULT_KINDS", "OllamaEmulator"]
