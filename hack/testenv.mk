# Test world targets (issue 3): testenv, testenv-up, testenv-down. Owned by the test-world work.
.PHONY: testenv
testenv:
	@echo "testenv: not built yet"
