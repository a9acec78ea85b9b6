package ops

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/consumers"
	"github.com/jobstream/jobstream/ops/broker"
	"github.com/jobstream/jobstream/ops/metrics"
	"github.com/jobstream/jobstream/schema"
	"github.com/jobstream/jobstream/schema/kafkaconn"
)

// usageError is bad usage: exit code 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// inRange is the usage error for a numeric flag outside lo..hi, or nil.
// Several flags are checked in order; the first out of range is named.
func inRange(checks ...rangeCheck) error {
	for _, c := range checks {
		if c.v < c.lo || c.v > c.hi {
			return usagef("--%s %d is out of range %d..%d", c.flag, c.v, c.lo, c.hi)
		}
	}
	return nil
}

// rangeCheck is one flag's value and the range it must be in.
type rangeCheck struct {
	flag      string
	v, lo, hi int
}

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, out io.Writer) error
}

func commands() []command {
	return []command{
		{"migrate", "create the jobs table (or add what it lacks), jobstream_runs and the publication", runMigrate},
		{"reader", "stream the jobs table's WAL into Kafka topics keyed by job_id", runReader},
		{"worker", "run one step: consume its trigger topic, claim, run CMD, complete, commit", runWorker},
		{"replay", "rewind the jobs found in a step's trigger topic over a range, so the step runs again", runReplay},
		{"cancel", "cancel jobs: a running step is stopped, no retry, no dead letter, no later step", runCancel},
		{"prune", "delete finished runs older than an age from jobstream_runs", runPrune},
		{"audit", "print a job's whole history from the topics, in commit order", runAudit},
		{"status", "show the slot, each step's group and lag, jobs per state, expired leases, dead letters", runStatus},
		{"ui", "serve the web console: the pipeline live, jobs, timelines, dead letters, retry/replay/cancel", runUI},
		{"broker", "run the embedded Kafka-protocol broker", runBroker},
		{"dev", "run everything locally: Postgres, broker, reader, workers, a demo batch", runDev},
		{"version", "print the version", func(_ context.Context, _ []string, out io.Writer) error {
			fmt.Fprintln(out, schema.Version)
			return nil
		}},
	}
}

// Main runs the jobstream command with args (without the program name) and
// returns the process exit code: 0 success, 1 runtime failure, 2 bad usage.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		printUsage(stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:], stdout)
		switch {
		case err == nil, errors.Is(err, flag.ErrHelp):
			return 0
		case errors.As(err, new(usageError)):
			fmt.Fprintf(stderr, "jobstream %s: %v\nRun 'jobstream %s --help' for usage.\n", c.name, err, c.name)
			return 2
		default:
			fmt.Fprintf(stderr, "jobstream %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(stderr, "jobstream: unknown command %q; run 'jobstream help' for the list of commands.\n", args[0])
	return 2
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "jobstream: change data capture from a Postgres jobs table to Kafka, and the step workers that act on it.")
	fmt.Fprintln(w, "\nUsage: jobstream <command> [flags]\n\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nEvery flag has an environment twin, shown in its help. Run 'jobstream <command> --help' for its flags.")
}

// flags is a flag set whose flags default to their environment twins.
type flags struct {
	*flag.FlagSet
	usage    func()
	envErr   error          // the first environment twin that could not be parsed
	operands bool           // the command takes positional arguments
	checks   []func() error // run after parsing, for flags registered together
	fromEnv  map[string]bool
}

// explicit reports whether flag name was given on the command line or by
// its environment twin (rather than left at its default).
func (f *flags) explicit(name string) bool {
	set := f.fromEnv[name]
	f.Visit(func(fl *flag.Flag) { set = set || fl.Name == name })
	return set
}

// envSet records that flag name takes its value from its environment twin.
func (f *flags) envSet(name, env string) {
	if os.Getenv(env) == "" {
		return
	}
	if f.fromEnv == nil {
		f.fromEnv = map[string]bool{}
	}
	f.fromEnv[name] = true
}

// takesOperands names the commands that take positional arguments; every
// other command refuses them.
var takesOperands = map[string]bool{"worker": true, "audit": true, "cancel": true}

func newFlags(name, usage string) *flags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {} // errors are one sentence; only --help prints the flags
	return &flags{FlagSet: fs, operands: takesOperands[name], usage: func() {
		w := os.Stdout
		fmt.Fprintf(w, "Usage: jobstream %s\n\n", usage)
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}}
}

// form is what a value of v's type must look like and how to write one,
// for error sentences; what is empty for strings, which take anything.
func form(v any) (what, how string) {
	switch v.(type) {
	case time.Duration:
		return "a duration", "use a number with a unit, such as 30s or 2m"
	case int, int64, uint, uint64:
		return "a whole number", "use digits only, such as 4"
	case bool:
		return "true or false", "write --name=true or --name=false"
	case float64:
		return "a number", "use digits, such as 1.5"
	}
	return "", ""
}

// flagForm is form for value v of flag name, with the name in place.
func flagForm(name string, v flag.Value) (what, how string) {
	if g, ok := v.(flag.Getter); ok {
		what, how = form(g.Get())
	}
	return what, strings.ReplaceAll(how, "--name", "--"+name)
}

func (f *flags) str(p *string, name, env, def, usage string) {
	f.envSet(name, env)
	if v, ok := os.LookupEnv(env); ok && v != "" {
		def = v
	}
	f.StringVar(p, name, def, usage+" [$"+env+"]")
}

func (f *flags) num(p *int, name, env string, def int, usage string) {
	f.envSet(name, env)
	f.IntVar(p, name, envDefault(f, env, def, strconv.Atoi), usage+" [$"+env+"]")
}

func (f *flags) dur(p *time.Duration, name, env string, def time.Duration, usage string) {
	f.envSet(name, env)
	f.DurationVar(p, name, envDefault(f, env, def, time.ParseDuration), usage+" [$"+env+"]")
}

func (f *flags) boolean(p *bool, name, env string, def bool, usage string) {
	f.envSet(name, env)
	f.BoolVar(p, name, envDefault(f, env, def, strconv.ParseBool), usage+" [$"+env+"]")
}

// envDefault is a flag's default: its environment twin env read by parse
// when set, else def. A value parse refuses is recorded by envParsed.
func envDefault[T any](f *flags, env string, def T, parse func(string) (T, error)) T {
	s := os.Getenv(env)
	if s == "" {
		return def
	}
	v, err := parse(s)
	var like T
	f.envParsed(env, s, like, err)
	if err != nil {
		return def
	}
	return v
}

// envParsed records the first environment twin whose value, meant to be
// of like's type, could not be parsed.
func (f *flags) envParsed(env, value string, like any, err error) {
	if err != nil && f.envErr == nil {
		what, how := form(like)
		f.envErr = usagef("%s=%q is not %s; %s", env, value, what, strings.ReplaceAll(how, "--name=", env+"="))
	}
}

// checked wraps a flag's value while parsing, so a value that does not
// parse becomes one sentence with the expected form instead of the flag
// package's "invalid value ... parse error".
type checked struct {
	flag.Value
	name string
	err  *error // the first bad value, shared by the set's flags
}

func (c checked) Set(s string) error {
	err := c.Value.Set(s)
	if err != nil && *c.err == nil {
		what, how := flagForm(c.name, c.Value)
		switch {
		case strings.Contains(err.Error(), "out of range"): // the flag package's errRange
			*c.err = usagef("--%s %q is too large; use a smaller number", c.name, s)
		case what == "":
			*c.err = usagef("--%s %q: %v", c.name, s, err)
		default:
			*c.err = usagef("--%s %q is not %s; %s", c.name, s, what, how)
		}
	}
	return err
}

// IsBoolFlag keeps --name (without a value) working for boolean flags.
func (c checked) IsBoolFlag() bool {
	b, ok := c.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// parse parses args; a flag error, or an environment twin that cannot be
// parsed, is bad usage; --help prints the flags and stops. A command that
// takes no positional arguments refuses them.
func (f *flags) parse(args []string) error {
	var valueErr error
	var wrapped []*flag.Flag
	f.VisitAll(func(fl *flag.Flag) {
		wrapped = append(wrapped, fl)
		fl.Value = checked{Value: fl.Value, name: fl.Name, err: &valueErr}
	})
	err := f.Parse(args)
	for _, fl := range wrapped {
		fl.Value = fl.Value.(checked).Value
	}
	switch {
	case errors.Is(err, flag.ErrHelp):
		f.usage()
		return flag.ErrHelp
	case valueErr != nil:
		return valueErr
	case err != nil:
		return f.flagError(err)
	case f.envErr != nil:
		return f.envErr
	case !f.operands && f.NArg() > 0:
		return usagef("%s takes no arguments, got %q; pass settings as --flags", f.Name(), f.Arg(0))
	}
	for _, check := range f.checks {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

// flagError turns the flag package's other errors into one sentence with
// the fix: an unknown flag names the nearest flags of the command.
func (f *flags) flagError(err error) error {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		near := f.nearest(name)
		if len(near) == 0 {
			var all []string
			f.VisitAll(func(fl *flag.Flag) { all = append(all, "--"+fl.Name) })
			return usagef("%s has no flag --%s; its flags are %s", f.Name(), name, strings.Join(all, ", "))
		}
		return usagef("%s has no flag --%s; did you mean %s?", f.Name(), name, orList(near))
	}
	if name, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
		if fl := f.Lookup(name); fl != nil {
			if what, how := flagForm(name, fl.Value); what != "" {
				return usagef("--%s needs %s after it; %s", name, what, how)
			}
		}
		return usagef("--%s needs a value after it; write --%s VALUE or --%s=VALUE", name, name, name)
	}
	if arg, ok := strings.CutPrefix(msg, "bad flag syntax: "); ok {
		return usagef("%q is not a flag; write --name value or --name=value", arg)
	}
	return usageError{msg}
}

// nearest returns the command's flags closest to name by edit distance
// (or that name starts), if any is close enough to be a typo.
func (f *flags) nearest(name string) []string {
	name = strings.ToLower(name)
	best, limit := -1, max(2, len(name)/3)
	var near []string
	f.VisitAll(func(fl *flag.Flag) {
		d := schema.EditDistance(name, fl.Name)
		if len(name) >= 3 && strings.HasPrefix(fl.Name, name) {
			d = min(d, 1)
		}
		switch {
		case d > limit:
		case best < 0 || d < best:
			best, near = d, []string{"--" + fl.Name}
		case d == best:
			near = append(near, "--"+fl.Name)
		}
	})
	return near
}

// orList joins names as "a", "a or b", "a, b or c".
func orList(names []string) string {
	if len(names) == 1 {
		return names[0]
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

// common holds the flags most commands share.
type common struct {
	databaseURL string
	brokers     string
	prefix      string
	pipeline    string
	publication string
	logLevel    string
	auth        kafkaconn.Auth
	tls         string
}

func (c *common) register(f *flags, db, kafka bool) {
	if db {
		f.str(&c.databaseURL, "database-url", "DATABASE_URL", "", "Postgres URL, postgres://user:pass@host:port/db")
		f.str(&c.publication, "publication", "JOBSTREAM_PUBLICATION", schema.DefaultPublication, "publication of the jobs table")
		f.checks = append(f.checks, func() error { return checkDatabaseURL(c.databaseURL) })
	}
	if kafka {
		f.str(&c.brokers, "brokers", "KAFKA_BROKERS", "", "Kafka bootstrap brokers, host:port[,host:port]")
		f.str(&c.prefix, "topic-prefix", "JOBSTREAM_TOPIC_PREFIX", schema.DefaultTopicPrefix, "prefix of every topic name")
		f.str(&c.pipeline, "pipeline", "JOBSTREAM_PIPELINE", "", `pipeline config file, {"steps": [...]} (default `+strings.Join(schema.DefaultSteps, ",")+")")
		f.str(&c.auth.Mechanism, "kafka-sasl", "KAFKA_SASL_MECHANISM", "", "SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (default: none)")
		f.str(&c.auth.User, "kafka-user", "KAFKA_SASL_USER", "", "SASL user")
		f.str(&c.auth.Password, "kafka-password", "KAFKA_SASL_PASSWORD", "", "SASL password (prefer the environment variable: flags show in ps)")
		f.str(&c.tls, "kafka-tls", "KAFKA_TLS", "", "TLS to the brokers: on, or verify-none (encrypt without checking the certificate)")
		f.str(&c.auth.CAFile, "kafka-ca", "KAFKA_TLS_CA", "", "PEM bundle of the CA that signs the brokers' certificates (turns TLS on)")
	}
	f.str(&c.logLevel, "log-level", "JOBSTREAM_LOG_LEVEL", "info", "debug, info, warn or error")
}

// checkDatabaseURL refuses a DATABASE_URL that is neither a postgres:// URL
// nor a key=value DSN, or that pgx cannot parse, naming the expected form
// and never the password. An empty one is needDB's to refuse.
func checkDatabaseURL(url string) error {
	if url == "" {
		return nil
	}
	_, err := pgconn.ParseConfig(url)
	if err == nil {
		return nil
	}
	const want = "use postgres://USER:PASSWORD@HOST:5432/DBNAME or key=value pairs such as 'host=HOST user=USER dbname=DBNAME'"
	// pgx's error shows the string with its password hidden, in backquotes.
	shown, reason := "", err.Error()
	if _, rest, ok := strings.Cut(reason, "`"); ok {
		if q, r, ok := strings.Cut(rest, "`"); ok {
			shown, reason = fmt.Sprintf(" %q", redact(q)), strings.TrimPrefix(r, ": ")
		}
	}
	if !strings.HasPrefix(url, "postgres://") && !strings.HasPrefix(url, "postgresql://") && !strings.Contains(url, "=") {
		return usagef("DATABASE_URL (or --database-url)%s is not a postgres:// URL or a key=value DSN; %s", shown, want)
	}
	return usagef("DATABASE_URL (or --database-url)%s cannot be parsed (%s); %s", shown, redact(reason), want)
}

func (c *common) logger() (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.logLevel)); err != nil {
		return nil, usagef("--log-level %q is not one of debug, info, warn, error", c.logLevel)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})), nil
}

func (c *common) brokerList() []string {
	var out []string
	for _, b := range strings.Split(c.brokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, b)
		}
	}
	return out
}

// broker returns how to reach the brokers, with SASL and TLS.
func (c *common) broker() (kafkaconn.Broker, error) {
	switch c.tls {
	case "", "off", "false":
	case "on", "true":
		c.auth.TLS = true
	case "verify-none":
		c.auth.TLS, c.auth.InsecureSkip = true, true
	default:
		return kafkaconn.Broker{}, usagef("--kafka-tls %q is not one of on, off, verify-none", c.tls)
	}
	b, err := c.auth.Apply(kafkaconn.Broker{Addrs: c.brokerList()})
	if err != nil {
		return b, usageError{withFlags(err)}
	}
	return b, nil
}

// reachBroker returns how to reach the brokers once one has answered, or
// one sentence saying why none did.
func (c *common) reachBroker(ctx context.Context) (kafkaconn.Broker, error) {
	b, err := c.broker()
	if err != nil {
		return b, err
	}
	return b, b.Ping(ctx, 10*time.Second)
}

// configFlags names the flag that sets each field of cdc.Config,
// consumers.Config, broker.Config and kafkaconn.Auth, so that their errors, which name Go fields, reach the
// command line naming flags.
var configFlags = map[string]string{
	"DatabaseURL": "database-url", "Brokers": "brokers", "TopicPrefix": "topic-prefix",
	"Pipeline": "pipeline", "Publication": "publication", "Partitions": "partitions",
	// cdc.Config
	"Slot": "slot", "Snapshot": "snapshot", "RecreateSlot": "recreate-slot", "Schemas": "schemas",
	"StatusInterval": "status-interval", "MaxBatch": "max-batch", "MaxMessageBytes": "max-message-bytes",
	// consumers.Config
	"Step": "step", "Concurrency": "concurrency", "GPUs": "gpus", "Lease": "lease",
	"Batch": "batch", "BatchWait": "batch-wait", "StartTimeout": "start-timeout",
	"MaxAttempts": "max-attempts", "RetryBackoff": "retry-backoff", "Timeout": "timeout",
	"Grace": "grace", "StallTimeout": "stall-timeout", "RunsRetention": "runs-retention",
	// broker.Config
	"Listen": "listen", "Nodes": "nodes",
	// kafkaconn.Auth
	"Mechanism": "kafka-sasl", "User": "kafka-user", "CAFile": "kafka-ca",
}

// withFlags returns err's message with the Config fields it names written
// as the flags that set them: "Lease 10ms is too short" becomes
// "--lease 10ms is too short".
func withFlags(err error) string {
	msg := err.Error()
	var ce *schema.ConfigError
	if !errors.As(err, &ce) {
		return msg
	}
	for _, field := range ce.Fields {
		if name, ok := configFlags[field]; ok {
			msg = regexp.MustCompile(`\b`+field+`\b`).ReplaceAllLiteralString(msg, "--"+name)
		}
	}
	return msg
}

// loadPipeline reads --pipeline (or the default steps); a file that cannot
// be read, has unknown keys or repeats a step is a usage error.
func (c *common) loadPipeline() (schema.Pipeline, error) {
	p, err := schema.LoadPipeline(c.pipeline)
	if err != nil {
		return p, usageError{err.Error()}
	}
	return p, nil
}

func (c *common) needDB() error {
	if c.databaseURL == "" {
		return usagef("no database given: set DATABASE_URL or --database-url (postgres://user:pass@host:port/db)")
	}
	return nil
}

func (c *common) needBrokers() error {
	if len(c.brokerList()) == 0 {
		return usagef("no Kafka broker given: set KAFKA_BROKERS or --brokers (host:port, comma-separated)")
	}
	return nil
}

// needs checks that a database (db) and brokers (brokers) are given, as
// the command requires, and loads the pipeline.
func (c *common) needs(db, brokers bool) (schema.Pipeline, error) {
	if db {
		if err := c.needDB(); err != nil {
			return schema.Pipeline{}, err
		}
	}
	if brokers {
		if err := c.needBrokers(); err != nil {
			return schema.Pipeline{}, err
		}
	}
	return c.loadPipeline()
}

// process checks what a long-running process (reader, worker) needs — a
// database, brokers, a pipeline, a log level and the broker settings — and
// returns them.
func (c *common) process() (p schema.Pipeline, log *slog.Logger, b kafkaconn.Broker, err error) {
	if p, err = c.needs(true, true); err != nil {
		return p, nil, b, err
	}
	if log, err = c.logger(); err != nil {
		return p, nil, b, err
	}
	b, err = c.broker()
	return p, log, b, err
}

// openPool checks that a database is given and connects to it.
func (c *common) openPool(ctx context.Context) (*pgxpool.Pool, error) {
	if err := c.needDB(); err != nil {
		return nil, err
	}
	return connectPool(ctx, c.databaseURL)
}

func runMigrate(ctx context.Context, args []string, out io.Writer) error {
	var c common
	f := newFlags("migrate", "migrate [flags]\n\nCreates the jobs table (or adds the columns it lacks), jobstream_runs and the publication. Idempotent.")
	c.register(f, true, false)
	if err := f.parse(args); err != nil {
		return err
	}
	if err := c.needDB(); err != nil {
		return err
	}
	changes, err := migrate(ctx, c.databaseURL, c.publication)
	if err != nil {
		return err
	}
	if len(changes) == 0 {
		fmt.Fprintln(out, "schema is up to date; nothing changed")
	}
	for _, ch := range changes {
		fmt.Fprintln(out, ch)
	}
	return nil
}

// migrate connects to url and applies schema.Migrate.
func migrate(ctx context.Context, url, publication string) ([]string, error) {
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, url)
	if err != nil {
		return nil, redactErr(schema.PostgresUnreachable(err))
	}
	defer conn.Close(context.Background())
	return schema.Migrate(ctx, conn, schema.MigrateOptions{Publication: publication})
}

func runReader(ctx context.Context, args []string, _ io.Writer) error {
	var c common
	var cfg cdc.Config
	f := newFlags("reader", "reader [flags]\n\nStreams the jobs table's changes (pgoutput) into <prefix>.<current_step> topics, keyed by job_id.")
	c.register(f, true, true)
	f.str(&cfg.Slot, "slot", "JOBSTREAM_SLOT", cdc.SlotDefault, "logical replication slot (created if missing)")
	f.num(&cfg.Partitions, "partitions", "JOBSTREAM_PARTITIONS", schema.DefaultPartitions, "partitions of topics the reader creates")
	f.str(&cfg.Snapshot, "snapshot", "JOBSTREAM_SNAPSHOT", cdc.SnapshotInitial, "when the slot is created: initial emits the existing rows first (op r), never streams only later changes")
	// No environment twin: a variable left set would re-snapshot at every restart.
	f.BoolVar(&cfg.RecreateSlot, "recreate-slot", false, "drop the slot at start and create it again with a fresh snapshot: the way out for a slot that can no longer decode (changes since its position are re-read from the table as op r events)")
	f.dur(&cfg.StatusInterval, "status-interval", "JOBSTREAM_STATUS_INTERVAL", cdc.StatusIntervalDefault, "longest time between two status updates to Postgres")
	f.num(&cfg.MaxBatch, "max-batch", "JOBSTREAM_MAX_BATCH", cdc.MaxBatchDefault, "most events in one produce round trip")
	f.num(&cfg.MaxMessageBytes, "max-message-bytes", "JOBSTREAM_MAX_MESSAGE_BYTES", 0, "largest event; larger ones go to the dead-letter topic (0: the broker's message.max.bytes)")
	tombstones := true
	f.boolean(&tombstones, "tombstones", "JOBSTREAM_TOMBSTONES", true, "follow each delete event with a tombstone (the delete's key, a null value), as Debezium does; --tombstones=false turns them off")
	key := "struct"
	f.str(&key, "key", "JOBSTREAM_KEY", "struct", `record key: struct is Debezium's {"job_id": …} (schemas off), bare the job_id alone`)
	f.boolean(&cfg.Schemas, "schemas", "JOBSTREAM_SCHEMAS", false, `write keys and values as Kafka Connect's JsonConverter does by default, {"schema": …, "payload": …}, with Debezium's Connect schemas; the payload is the plain form`)
	var httpAddr string
	f.str(&httpAddr, "http-addr", "JOBSTREAM_HTTP_ADDR", "", "serve /metrics, /healthz and /readyz on this address, e.g. :9100")
	if err := f.parse(args); err != nil {
		return err
	}
	if key != "struct" && key != "bare" {
		return usagef("--key %q: use struct (Debezium's key struct, the default) or bare (the job_id alone)", key)
	}
	cfg.BareKey = key == "bare"
	// Rows whose step is not in the pipeline go to the dead-letter topic.
	p, log, b, err := c.process()
	if err != nil {
		return err
	}
	cfg.Pipeline = p
	cfg.DatabaseURL, cfg.Brokers, cfg.TopicPrefix, cfg.Publication, cfg.Logger = c.databaseURL, b.Addrs, c.prefix, c.publication, log
	cfg.SASL, cfg.TLS = b.SASL, b.TLS
	cfg.NoTombstones = !tombstones
	cfg.MaxBatchBytes = cdc.MaxBatchBytesDefault
	if err := cfg.Validate(); err != nil {
		return usageError{withFlags(err)}
	}
	reg := metrics.NewRegistry()
	cfg.Hooks = append(cfg.Hooks, metrics.NewReaderHooks(reg))
	r, err := cdc.New(cfg)
	if err != nil {
		return usageError{withFlags(err)}
	}
	metrics.RegisterReader(reg, r)
	return serveWhile(ctx, httpAddr, reg, metrics.ReadyWhen(r.Ready(), "reader"), log, func(ctx context.Context) error {
		if err := r.Run(ctx); err != nil {
			return errors.New(withFlags(err))
		}
		return nil
	})
}

// serveWhile runs run and, beside it, the HTTP endpoints on httpAddr (none
// if it is empty); the first to fail stops both. A deliberate stop returns
// nil.
func serveWhile(ctx context.Context, httpAddr string, reg *prometheus.Registry, ready func() error, log *slog.Logger, run func(context.Context) error) error {
	g, gctx := errgroup.WithContext(ctx)
	if httpAddr != "" {
		l, err := net.Listen("tcp", httpAddr)
		if err != nil {
			return fmt.Errorf("--http-addr %s: %w", httpAddr, err)
		}
		g.Go(func() error { return metrics.Serve(gctx, l, reg, ready, log) })
	}
	g.Go(func() error {
		if err := run(gctx); err != nil {
			return err
		}
		return context.Canceled // stop the HTTP server too
	})
	if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
		return redactErr(err)
	}
	return nil
}

func runWorker(ctx context.Context, args []string, _ io.Writer) error {
	var c common
	var wf workerFlags
	f := newFlags("worker", "worker --step S [flags] -- CMD [ARGS...]\n       jobstream worker --step S --serve [flags] -- CMD [ARGS...]\n       jobstream worker --step S [flags] --http URL\n\n"+
		"Runs step S: consumes the topic of the step before S, claims each job whose previous step is done,\n"+
		"runs CMD (no shell; the job as JSON on stdin; the result as JSON on stdout) or POSTs the job to URL,\n"+
		"stores the result and commits. Exit code "+strconv.Itoa(consumers.ExitPermanent)+" from CMD, or a 4xx answer from URL, fails the job at once;\n"+
		"any other failure is retried up to --max-attempts. SIGTERM lets running steps finish within --grace.\n"+
		"With --serve, CMD is one long-lived process per slot (a model loaded once) fed jobs as JSON lines; see the README.\n"+
		"Settings not given as flags come from the step's part of the --pipeline file (\"workers\": {\"S\": {...}}).")
	c.register(f, true, true)
	wf.register(f)
	if err := f.parse(args); err != nil {
		return err
	}
	cfg := &wf.cfg
	if cfg.Step == "" {
		return usagef("no step given: pass --step S")
	}
	p, log, b, err := c.process()
	if err != nil {
		return err
	}
	wf.argv = f.Args()
	if err := wf.fromFile(f, p.Workers[cfg.Step]); err != nil {
		return err
	}
	if err := wf.finish(); err != nil {
		return err
	}
	cfg.DatabaseURL, cfg.Brokers, cfg.SASL, cfg.TLS = c.databaseURL, b.Addrs, b.SASL, b.TLS
	cfg.TopicPrefix, cfg.Pipeline, cfg.Logger = c.prefix, p, log
	cfg.MaxRetryBackoff = consumers.MaxRetryBackoffDefault
	if err := cfg.Validate(); err != nil {
		return usageError{withFlags(err)}
	}
	if wf.url != "" && cfg.Timeout == 0 {
		log.Warn("--http without --timeout: a step service that never answers holds its job until this worker stops; set --timeout to the longest a step may take")
	}
	reg := metrics.NewRegistry()
	cfg.Hooks = append(cfg.Hooks, metrics.NewWorkerHooks(reg))
	w, err := consumers.New(*cfg)
	if err != nil {
		return usageError{withFlags(err)}
	}
	metrics.RegisterWorker(reg, w, cfg.Step)
	return serveWhile(ctx, wf.httpAddr, reg, metrics.WorkerReady(w), log, w.Run)
}

// workerFlags are the worker's own flags, and what they make of a Config.
type workerFlags struct {
	cfg            consumers.Config
	gpus, httpAddr string
	url            string // --http
	serve          bool
	argv           []string
}

func (wf *workerFlags) register(f *flags) {
	cfg := &wf.cfg
	f.str(&cfg.Step, "step", "JOBSTREAM_STEP", "", "the step this worker runs (required)")
	f.str(&wf.url, "http", "JOBSTREAM_HTTP_URL", "", "run the step by POSTing the job JSON to this URL instead of a command (2xx done, 4xx permanent failure, 5xx retried)")
	f.boolean(&wf.serve, "serve", "JOBSTREAM_SERVE", false, "run CMD as one long-lived process per slot, fed jobs as JSON lines on stdin, answering on stdout (a model loaded once)")
	f.num(&cfg.Concurrency, "concurrency", "JOBSTREAM_CONCURRENCY", consumers.ConcurrencyDefault, "steps run at once (steps that need no GPU)")
	f.str(&wf.gpus, "gpus", "JOBSTREAM_GPUS", "", "GPU ids, e.g. 0,1,2,3: one member per GPU running one step at a time, CUDA_VISIBLE_DEVICES set for each")
	f.num(&cfg.Batch, "batch", "JOBSTREAM_BATCH", consumers.BatchDefault, "jobs handed to the step at once, with --serve or --http (each claimed, retried and dead-lettered on its own)")
	f.dur(&cfg.BatchWait, "batch-wait", "JOBSTREAM_BATCH_WAIT", consumers.BatchWaitDefault, "how long a slot gathers a batch before it hands over one that is not full")
	f.dur(&cfg.StartTimeout, "start-timeout", "JOBSTREAM_START_TIMEOUT", consumers.StartTimeoutDefault, "with --serve: how long the process may take to load and print {\"ready\": true} (not counted in --timeout)")
	f.dur(&cfg.Lease, "lease", "JOBSTREAM_LEASE", consumers.LeaseDefault, "how long a run is held without a heartbeat; a dead worker's jobs move on after about this long")
	f.num(&cfg.MaxAttempts, "max-attempts", "JOBSTREAM_MAX_ATTEMPTS", consumers.MaxAttemptsDefault, "attempts before a job fails")
	f.dur(&cfg.RetryBackoff, "retry-backoff", "JOBSTREAM_RETRY_BACKOFF", consumers.RetryBackoffDefault, "delay before the first retry; it grows 1.5x per retry, with jitter")
	f.dur(&cfg.Timeout, "timeout", "JOBSTREAM_TIMEOUT", 0, "bound on one attempt; past it the step's process group is killed and the attempt retried (0: none)")
	f.dur(&cfg.Grace, "grace", "JOBSTREAM_GRACE", consumers.GraceDefault, "time running steps get to finish on SIGTERM; past it their runs are released to other workers")
	f.dur(&cfg.StallTimeout, "stall-timeout", "JOBSTREAM_STALL_TIMEOUT", consumers.StallTimeoutDefault, "how long a partition no member consumes may hold an unclaimed job before the members rejoin the group to recover it (negative: never)")
	f.dur(&cfg.RunsRetention, "runs-retention", "JOBSTREAM_RUNS_RETENTION", consumers.RunsRetentionDefault, "how long finished runs stay in jobstream_runs before the sweeper prunes them (negative: never)")
	f.str(&wf.httpAddr, "http-addr", "JOBSTREAM_HTTP_ADDR", "", "serve /metrics, /healthz and /readyz on this address, e.g. :9101")
}

// fromFile fills in, from the step's settings in the pipeline file, every
// setting not given as a flag or its environment twin.
func (wf *workerFlags) fromFile(f *flags, ws schema.WorkerSettings) error {
	applySettings(&wf.cfg, &wf.gpus, ws, f.explicit)
	// The executor: a command line or --http replaces the file's.
	if len(wf.argv) > 0 || f.explicit("http") {
		return nil
	}
	switch {
	case len(ws.Command) > 0:
		wf.argv = ws.Command
	case len(ws.Serve) > 0:
		wf.argv = ws.Serve
		wf.serve = wf.serve || !f.explicit("serve")
	case ws.HTTP != "":
		wf.url = ws.HTTP
	}
	return nil
}

// applySettings sets on cfg (and gpus, as --gpus takes them) each setting
// ws gives whose flag is not given.
func applySettings(cfg *consumers.Config, gpus *string, ws schema.WorkerSettings, given func(flag string) bool) {
	set := func(name string, ok bool, apply func()) {
		if ok && !given(name) {
			apply()
		}
	}
	set("concurrency", ws.Concurrency > 0, func() { cfg.Concurrency = ws.Concurrency })
	set("gpus", len(ws.GPUs) > 0, func() { *gpus = strings.Join(ws.GPUs, ",") })
	set("batch", ws.Batch > 0, func() { cfg.Batch = ws.Batch })
	set("batch-wait", ws.BatchWait > 0, func() { cfg.BatchWait = time.Duration(ws.BatchWait) })
	set("start-timeout", ws.StartTimeout > 0, func() { cfg.StartTimeout = time.Duration(ws.StartTimeout) })
	set("lease", ws.Lease > 0, func() { cfg.Lease = time.Duration(ws.Lease) })
	set("max-attempts", ws.MaxAttempts > 0, func() { cfg.MaxAttempts = ws.MaxAttempts })
	set("retry-backoff", ws.RetryBackoff > 0, func() { cfg.RetryBackoff = time.Duration(ws.RetryBackoff) })
	set("timeout", ws.Timeout > 0, func() { cfg.Timeout = time.Duration(ws.Timeout) })
	set("grace", ws.Grace > 0, func() { cfg.Grace = time.Duration(ws.Grace) })
}

// setExecutor sets cfg's handler: a batch over HTTP, one job over HTTP, a
// serve process, or a process per job.
func setExecutor(cfg *consumers.Config, argv []string, url string, serve bool) {
	switch {
	case url != "" && cfg.Batch > 1:
		cfg.BatchHandler = consumers.HTTPBatch(url)
	case url != "":
		cfg.Handler = consumers.HTTP(url)
	case serve:
		cfg.BatchHandler = consumers.Serve(argv...)
	default:
		cfg.Handler = consumers.Exec(argv...)
	}
}

// finish checks the executor and the GPUs, and sets the handler.
func (wf *workerFlags) finish() error {
	cfg := &wf.cfg
	for _, g := range strings.Split(wf.gpus, ",") {
		if g = strings.TrimSpace(g); g != "" {
			if !gpuID.MatchString(g) {
				return usagef("--gpus: %q is not a GPU id; give what CUDA_VISIBLE_DEVICES takes, indexes such as 0,1,2 or UUIDs such as GPU-8f6c… or MIG-… (nvidia-smi -L lists them)", g)
			}
			cfg.GPUs = append(cfg.GPUs, g)
		}
	}
	switch {
	case len(wf.argv) == 0 && wf.url == "":
		return usagef("no step command given: pass it after --, e.g. jobstream worker --step %s -- ops/steps/echo.sh, or pass --http URL, or set workers.%[1]s in the --pipeline file", cfg.Step)
	case len(wf.argv) > 0 && wf.url != "":
		return usagef("both a step command and --http given; pass one of them")
	case wf.serve && wf.url != "":
		return usagef("--serve runs a command, not a URL; drop --serve, or pass the server's command after --")
	case cfg.Batch > 1 && !wf.serve && wf.url == "":
		return usagef("--batch %d needs --serve or --http: a command runs one job per process", cfg.Batch)
	}
	setExecutor(cfg, wf.argv, wf.url, wf.serve)
	return nil
}

func runBroker(ctx context.Context, args []string, out io.Writer) error {
	var cfg broker.Config
	f := newFlags("broker", "broker [flags]\n\nRuns the embedded Kafka-protocol broker (kfake) until SIGINT or SIGTERM.")
	f.str(&cfg.Listen, "listen", "JOBSTREAM_BROKER_LISTEN", "127.0.0.1:9092", "host:port to listen on")
	f.str(&cfg.DataDir, "data-dir", "JOBSTREAM_BROKER_DATA_DIR", "", "folder that persists topics, offsets and groups (empty: memory only)")
	f.num(&cfg.Partitions, "partitions", "JOBSTREAM_PARTITIONS", schema.DefaultPartitions, "partitions of auto-created topics")
	f.num(&cfg.Nodes, "nodes", "JOBSTREAM_BROKER_NODES", 1, "broker nodes, listening on --listen's port and the ones after it (3: a cluster where topics get replication factor 3)")
	var faultFor time.Duration
	f.dur(&faultFor, "fault-on-usr1", "JOBSTREAM_BROKER_FAULT_ON_USR1", 0, "for chaos tests: on SIGUSR1, answer produce and fetch with errors for this long")
	if err := f.parse(args); err != nil {
		return err
	}
	if err := inRange(rangeCheck{"partitions", cfg.Partitions, 1, 10000}); err != nil {
		return err
	}
	if faultFor < 0 {
		return usagef("--fault-on-usr1 %s is negative", faultFor)
	}
	// For chaos tests: SIGUSR1 makes produce and fetch fail for a while.
	// Caught before the broker starts, so that one sent while it loads its
	// data is queued rather than fatal.
	usr1 := make(chan os.Signal, 1)
	if faultFor > 0 {
		signal.Notify(usr1, syscall.SIGUSR1)
		defer signal.Stop(usr1)
	}
	b, err := broker.Start(cfg)
	if ce := (*schema.ConfigError)(nil); errors.As(err, &ce) {
		return usageError{withFlags(err)}
	} else if err != nil {
		return err
	}
	persist := "in memory only"
	if cfg.DataDir != "" {
		persist = "persisted in " + cfg.DataDir
	}
	fmt.Fprintf(out, "broker listening on %s (%s); Ctrl-C stops it\n", strings.Join(b.Addrs(), ","), persist)
	if faultFor > 0 {
		go func() {
			for range usr1 {
				fmt.Fprintf(out, "injecting produce and fetch errors for %s\n", faultFor)
				b.FailProduceAndFetch(faultFor)
			}
		}()
	}
	<-ctx.Done()
	b.Close()
	fmt.Fprintln(out, "broker stopped")
	return nil
}

// gpuID is a GPU as CUDA_VISIBLE_DEVICES names one: a non-negative index,
// or a GPU-… or MIG-… UUID (nvidia-smi -L), MIG's older form with /GI/CI.
var gpuID = regexp.MustCompile(`^([0-9]+|(GPU|MIG)-[0-9A-Za-z/-]+)$`)

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
