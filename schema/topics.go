package schema

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
)

// DefaultTopicPrefix is the prefix of every topic name when none is given.
const DefaultTopicPrefix = "jobs"

// The errors of a reader, worker or command given nowhere to connect.
var (
	ErrNoDatabase = errors.New("no database given: set DATABASE_URL or --database-url (postgres://user:pass@host:port/db)")
	ErrNoBrokers  = errors.New("no Kafka broker given: set KAFKA_BROKERS or --brokers (host:port, comma-separated)")
)

// DefaultPartitions is the partition count of topics jobstream creates.
const DefaultPartitions = 12

// Topic returns the topic that carries changes of rows whose current_step is step.
func Topic(prefix, step string) string { return prefix + "." + step }

// DLQTopic returns the dead-letter topic.
func DLQTopic(prefix string) string { return prefix + ".dlq" }

// ReplayTopic returns the topic where replays are recorded, keyed by job_id.
func ReplayTopic(prefix string) string { return prefix + ".replays" }

// GroupID returns the consumer group of the workers of step.
func GroupID(prefix, step string) string { return prefix + "." + step + ".workers" }

// ValidTopic reports why name cannot be a Kafka topic name, or nil.
func ValidTopic(name string) error {
	if name == "" || name == "." || name == ".." {
		return fmt.Errorf("topic name %q is not allowed", name)
	}
	if len(name) > 249 {
		return fmt.Errorf("topic name is %d bytes, over Kafka's limit of 249", len(name))
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Errorf("topic name %q has %q; Kafka allows only letters, digits, '.', '_' and '-'", name, r)
		}
	}
	return nil
}

// Broker describes how to reach the Kafka brokers.
type Broker struct {
	// Addrs are host:port pairs of bootstrap brokers.
	Addrs []string
	// SASL authenticates to the brokers (nil: none).
	SASL sasl.Mechanism
	// TLS encrypts the connections (nil: plaintext).
	TLS *tls.Config
}

// Ping checks within timeout that a broker answers a metadata request, so a
// command can fail at start with one clear sentence instead of retrying.
func (b Broker) Ping(ctx context.Context, timeout time.Duration) error {
	if len(b.Addrs) == 0 {
		return ErrNoBrokers
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for _, a := range b.Addrs {
		c := Broker{Addrs: []string{a}, SASL: b.SASL, TLS: b.TLS}.Client(timeout)
		if _, err := c.Metadata(ctx, &kafka.MetadataRequest{}); err != nil {
			last = err
			continue
		}
		return nil
	}
	var op *net.OpError
	dialFailed := errors.As(last, &op) && op.Op == "dial"
	var certErr *tls.CertificateVerificationError
	var recordErr tls.RecordHeaderError
	refusedSASL := fmt.Errorf("the Kafka broker at %v refused the SASL credentials; check KAFKA_SASL_USER, KAFKA_SASL_PASSWORD and KAFKA_SASL_MECHANISM", b.Addrs)
	switch {
	case errors.Is(last, kafka.SASLAuthenticationFailed):
		return refusedSASL
	case errors.As(last, &certErr):
		return fmt.Errorf("the Kafka broker at %v presented a TLS certificate this host does not trust (%v); set KAFKA_TLS_CA (--kafka-ca) to the CA that signs it", b.Addrs, certErr.Err)
	case errors.As(last, &recordErr), !dialFailed && b.TLS != nil && (errors.Is(last, context.DeadlineExceeded) || errors.Is(last, io.EOF)):
		return fmt.Errorf("the Kafka broker at %v did not complete a TLS handshake; if its listener is plaintext, unset KAFKA_TLS and KAFKA_TLS_CA, or use its TLS listener", b.Addrs)
	case b.SASL != nil && !dialFailed:
		return refusedSASL
	case !dialFailed && b.TLS == nil && (errors.Is(last, io.EOF) || errors.Is(last, io.ErrUnexpectedEOF)):
		return fmt.Errorf("the Kafka broker at %v closed the connection at once; if its listener expects TLS, set KAFKA_TLS=on (--kafka-tls on) or KAFKA_TLS_CA", b.Addrs)
	}
	return fmt.Errorf("cannot reach a Kafka broker at %v (%v); start one (jobstream broker, or Kafka) or fix KAFKA_BROKERS", b.Addrs, last)
}

// EnsureTopics creates the topics that do not exist yet, each with
// partitions partitions. Existing topics are left as they are.
func (b Broker) EnsureTopics(ctx context.Context, partitions int, topics ...string) error {
	if len(topics) == 0 {
		return nil
	}
	c := b.Client(10 * time.Second)
	req := &kafka.CreateTopicsRequest{}
	for _, t := range topics {
		if err := ValidTopic(t); err != nil {
			return err
		}
		req.Topics = append(req.Topics, kafka.TopicConfig{Topic: t, NumPartitions: partitions, ReplicationFactor: -1})
	}
	resp, err := c.CreateTopics(ctx, req)
	if err != nil {
		return fmt.Errorf("create topics: %w", err)
	}
	for t, err := range resp.Errors {
		if err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
			return fmt.Errorf("create topic %s: %w", t, err)
		}
	}
	return nil
}

// PostgresUnreachable turns a failed connection attempt into one sentence
// naming the fix. When the server answered with an error (a role or
// database that does not exist, a wrong password), that is the cause: with
// sslmode=prefer pgx tries TLS first, and its "server refused TLS
// connection" before the plaintext attempt says nothing about it.
// Otherwise pgx reports one line per address tried; the first attempt that
// is not the refused TLS of a fallback says it.
func PostgresUnreachable(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return fmt.Errorf("cannot connect to Postgres: the server says %s (SQLSTATE %s); %s", pgErr.Message, pgErr.Code, connectFix(pgErr.Code))
	}
	lines := strings.Split(err.Error(), "\n")
	msg := lines[0]
	var attempts []string
	for _, l := range lines[1:] {
		if l = strings.TrimSpace(l); l != "" {
			attempts = append(attempts, l)
		}
	}
	for i, a := range attempts {
		if !strings.Contains(a, "server refused TLS connection") || i == len(attempts)-1 {
			msg += " " + a
			break
		}
	}
	return fmt.Errorf("cannot connect to Postgres (%s); check DATABASE_URL and that the server is up", msg)
}

// connectFix names the fix for an error the server gave at connection.
func connectFix(code string) string {
	switch code {
	case "28000": // invalid_authorization_specification: no such role, or no pg_hba.conf entry
		return "check the user in DATABASE_URL (and, for a pg_hba.conf refusal, the server's pg_hba.conf)"
	case "28P01": // invalid_password
		return "check the user and password in DATABASE_URL"
	case "3D000": // invalid_catalog_name
		return "check the database name in DATABASE_URL, or create it with createdb"
	case "42501": // insufficient_privilege
		return "grant the user CONNECT on the database, or use another user in DATABASE_URL"
	case "53300": // too_many_connections
		return "the server has no free connection slot; close idle clients or raise max_connections"
	case "57P03": // cannot_connect_now
		return "the server is starting or shutting down; try again in a moment"
	}
	return "check DATABASE_URL"
}
