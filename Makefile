# Conveniences over tasks.py (which needs nothing but Python >= 3.11).
PY ?= python3
.PHONY: run test lint bench
run:   ; $(PY) tasks.py run
test:  ; $(PY) tasks.py test
lint:  ; $(PY) tasks.py lint
bench: ; $(PY) tasks.py bench
