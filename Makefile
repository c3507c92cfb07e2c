.PHONY: demo test setup lint
demo:
	./dev demo
test:
	./dev test
setup:
	./dev setup
lint:
	.venv/bin/ruff check vineyard tests
