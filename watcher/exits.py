"""Every exit status of the command line, named once (CONTRACT §2). ``cli.main`` returns them."""

OK = 0  # success; a clean stop (SIGTERM/SIGINT); watch: the run completed
FAILURE = 1  # a fatal error; watch: the run failed; test-sink: not delivered
STORE = FAILURE  # status, events, deliveries, replay, migrate-state: the state store cannot be opened or read
USAGE = 2  # a config or usage error
NOT_FOUND = 3  # watch: no such run
AUTH = 4  # watch: the API refused the key
TIMEOUT = 124  # watch --timeout ran out (like coreutils timeout)
INTERRUPTED = 130  # watch: Ctrl-C (128 + SIGINT)
