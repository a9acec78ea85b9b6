package kafkaconn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"

	"github.com/jobstream/jobstream/schema"
)

// ErrNoBrokers is the error of a reader, worker or command given no Kafka
// broker to connect to.
var ErrNoBrokers = errors.New("no Kafka broker given: Broker.Addrs is empty")

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
// EmbeddedClusterID is the cluster id of jobstream's embedded broker
// (ops/broker, built on kfake): what makes the workers run the stall
// watchdog, which guards against a fault of that broker's group
// coordinator that real Kafka does not have.
const EmbeddedClusterID = "jobstream-embedded-broker"

// ClusterID returns the cluster id the brokers report ("" when they report
// none or cannot be reached).
func (b Broker) ClusterID(ctx context.Context, timeout time.Duration) string {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for _, a := range b.Addrs {
		c := Broker{Addrs: []string{a}, SASL: b.SASL, TLS: b.TLS}.Client(timeout)
		if md, err := c.Metadata(ctx, &kafka.MetadataRequest{}); err == nil {
			return md.ClusterID
		}
	}
	return ""
}

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
	case errors.As(last, &recordErr), !dialFailed && b.TLS != nil && (errors.Is(last, context.DeadlineExceeded) || errors.Is(last, io.EOF) || isTimeout(last)):
		return fmt.Errorf("the Kafka broker at %v did not complete a TLS handshake; if its listener is plaintext, unset KAFKA_TLS and KAFKA_TLS_CA, or use its TLS listener", b.Addrs)
	case b.SASL != nil && !dialFailed:
		return refusedSASL
	case !dialFailed && b.TLS == nil && (errors.Is(last, io.EOF) || errors.Is(last, io.ErrUnexpectedEOF)):
		return fmt.Errorf("the Kafka broker at %v closed the connection at once; if its listener expects TLS, set KAFKA_TLS=on (--kafka-tls on) or KAFKA_TLS_CA", b.Addrs)
	}
	return fmt.Errorf("cannot reach a Kafka broker at %v (%v); start one (jobstream broker, or Kafka) or fix KAFKA_BROKERS", b.Addrs, last)
}

// ClusterReplication is the replication factor of the topics EnsureTopics
// creates on a cluster of at least as many brokers, and
// ClusterMinInsyncReplicas their min.insync.replicas: with acks=all a write
// is acknowledged once two of the three replicas hold it, so one broker may
// be down (restarted, upgraded) without the reader stopping or an
// acknowledged event being lost.
const (
	ClusterReplication       = 3
	ClusterMinInsyncReplicas = 2
)

// EnsureTopics creates the topics that do not exist yet, each with
// partitions partitions. On a cluster of ClusterReplication brokers or more
// a topic gets that replication factor and min.insync.replicas
// ClusterMinInsyncReplicas; on a smaller one, the broker's default
// replication factor. Existing topics are left as they are.
func (b Broker) EnsureTopics(ctx context.Context, partitions int, topics ...string) error {
	if len(topics) == 0 {
		return nil
	}
	c := b.Client(10 * time.Second)
	md, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: topics})
	if err != nil {
		return fmt.Errorf("create topics: %w", err)
	}
	rf, configs := -1, []kafka.ConfigEntry(nil)
	if len(md.Brokers) >= ClusterReplication {
		rf = ClusterReplication
		configs = []kafka.ConfigEntry{{ConfigName: "min.insync.replicas", ConfigValue: strconv.Itoa(ClusterMinInsyncReplicas)}}
	}
	req := &kafka.CreateTopicsRequest{}
	for _, t := range topics {
		if err := schema.ValidTopic(t); err != nil {
			return err
		}
		req.Topics = append(req.Topics, kafka.TopicConfig{Topic: t, NumPartitions: partitions, ReplicationFactor: rf, ConfigEntries: configs})
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

// Auth is how to authenticate to the brokers: SASL and TLS. The zero
// value is plaintext without SASL.
type Auth struct {
	// Mechanism is "", "PLAIN", "SCRAM-SHA-256" or "SCRAM-SHA-512".
	Mechanism string
	User      string
	Password  string
	// TLS turns TLS on. CAFile, if set, is the PEM bundle that signs the
	// brokers' certificates (default: the system roots).
	TLS          bool
	CAFile       string
	InsecureSkip bool
}

// Apply returns b with SASL and TLS set from a, or one sentence saying what
// is wrong. The password is never part of an error.
func (a Auth) Apply(b Broker) (Broker, error) {
	switch strings.ToUpper(a.Mechanism) {
	case "":
	case "PLAIN":
		b.SASL = plain.Mechanism{Username: a.User, Password: a.Password}
	case "SCRAM-SHA-256", "SCRAM-SHA-512":
		algo := scram.SHA256
		if strings.HasSuffix(strings.ToUpper(a.Mechanism), "512") {
			algo = scram.SHA512
		}
		m, err := scram.Mechanism(algo, a.User, a.Password)
		if err != nil {
			return b, schema.FieldError("User", "%q cannot be used with SASL %s: %v", a.User, a.Mechanism, err)
		}
		b.SASL = m
	default:
		return b, schema.FieldError("Mechanism", "%q is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512", a.Mechanism)
	}
	if a.Mechanism != "" && a.User == "" {
		return b, schema.FieldError("User", "is empty; SASL %s needs one", a.Mechanism)
	}
	if a.TLS || a.CAFile != "" {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: a.InsecureSkip} //nolint:gosec // opt-in for tests and self-signed setups
		if a.CAFile != "" {
			pem, err := os.ReadFile(a.CAFile)
			if err != nil {
				return b, &schema.ConfigError{Fields: []string{"CAFile"}, Msg: fmt.Sprintf("CAFile cannot be read: %v", err)}
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return b, schema.FieldError("CAFile", "%s holds no PEM certificate", a.CAFile)
			}
			cfg.RootCAs = pool
		}
		b.TLS = cfg
	}
	return b, nil
}

// Transport returns a kafka-go transport (for Writer and Client) that speaks
// the broker's SASL and TLS.
func (b Broker) Transport() *kafka.Transport {
	return &kafka.Transport{SASL: b.SASL, TLS: b.TLS, DialTimeout: 10 * time.Second}
}

// Dialer returns a kafka-go dialer (for Reader and Conn) that speaks the
// broker's SASL and TLS.
func (b Broker) Dialer() *kafka.Dialer {
	return &kafka.Dialer{Timeout: 10 * time.Second, DualStack: true, SASLMechanism: b.SASL, TLS: b.TLS}
}

// Client returns a kafka-go admin client for the brokers.
func (b Broker) Client(timeout time.Duration) *kafka.Client {
	return &kafka.Client{Addr: kafka.TCP(b.Addrs...), Timeout: timeout, Transport: b.Transport()}
}

// isTimeout reports whether err is a network timeout (a read deadline that
// passed): a plaintext listener waits for more bytes of a TLS hello.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
