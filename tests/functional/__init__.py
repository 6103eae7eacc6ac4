"""In-process functional tests: real code against loopback servers, no broker."""
