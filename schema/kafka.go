package schema

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"
)

// KafkaAuth is how to authenticate to the brokers: SASL and TLS. The zero
// value is plaintext without SASL.
type KafkaAuth struct {
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
func (a KafkaAuth) Apply(b Broker) (Broker, error) {
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
			return b, fmt.Errorf("SASL %s for user %q: %v", a.Mechanism, a.User, err)
		}
		b.SASL = m
	default:
		return b, fmt.Errorf("SASL mechanism %q is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512", a.Mechanism)
	}
	if a.Mechanism != "" && a.User == "" {
		return b, fmt.Errorf("SASL %s needs a user: set KAFKA_SASL_USER or --kafka-user", a.Mechanism)
	}
	if a.TLS || a.CAFile != "" {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: a.InsecureSkip} //nolint:gosec // opt-in for tests and self-signed setups
		if a.CAFile != "" {
			pem, err := os.ReadFile(a.CAFile)
			if err != nil {
				return b, fmt.Errorf("read Kafka CA bundle: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return b, fmt.Errorf("%s holds no PEM certificate", a.CAFile)
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
