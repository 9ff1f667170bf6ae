"""The jinja2 templates (emails/ and the invoice), shipped inside the package so an installed worker
finds them."""

from pathlib import Path

TEMPLATES_DIR = Path(__file__).resolve().parent
