# The README's two commands are `make demo` and `make test`; both set up what they need first.
.PHONY: demo test down setup

demo:
	scripts/demo.sh

test:
	scripts/test.sh

down:
	.venv/bin/remediator lab down

setup:
	scripts/bootstrap.sh
