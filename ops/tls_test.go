package ops_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/jobstream/jobstream/ops/broker"
	"github.com/jobstream/jobstream/ops/harness"
)

// TestKafkaTLS: against a broker that speaks only TLS, with a certificate
// signed by a private CA, the reader and a worker (real processes) move a job
// with --kafka-ca; status works; without the CA it is one sentence about
// the certificate, and with --kafka-tls verify-none it connects.
func TestKafkaTLS(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	caFile, serverCert := testCA(t, e.Dir)
	b := harness.StartBroker(t, broker.Config{Opts: []kfake.Opt{
		kfake.TLS(&tls.Config{Certificates: []tls.Certificate{serverCert}, MinVersion: tls.VersionTLS12}),
	}})

	e.Brokers = []string{b.Addr()}
	e.StartProcess(t, "reader", nil, "reader", "--kafka-ca", caFile)
	e.StartProcess(t, "worker", nil, "worker", "--step", "vlm_analyze", "--kafka-ca", caFile, "--", "sh", "-c", "cat >/dev/null; echo '{}'")
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('tls1', 'img_gen', 'done')`)
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		n := e.Count(t, `SELECT count(*) FROM jobs WHERE job_id = 'tls1' AND current_step = 'vlm_analyze' AND status = 'done'`)
		return n == 1, "tls1 not at (vlm_analyze, done) through a TLS broker"
	})

	flags := []string{"status", "--database-url", e.DatabaseURL, "--brokers", b.Addr(), "--topic-prefix", e.Prefix, "--slot", e.Slot}
	if code, out, stderr := runMain(t, append(flags, "--kafka-ca", caFile)...); code != 0 || !strings.Contains(out, "vlm_analyze") {
		t.Fatalf("status with --kafka-ca: exit %d: %s %s", code, out, stderr)
	}
	code, _, stderr := runMain(t, append(flags, "--kafka-tls", "on")...)
	if code != 1 || !strings.Contains(stderr, "certificate") || strings.Count(strings.TrimSpace(stderr), "\n") > 1 {
		t.Fatalf("TLS with an unknown CA: exit %d: %q; want exit 1 and one sentence about the certificate", code, stderr)
	}
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"plaintext to a TLS listener", nil, "KAFKA_TLS=on"},
		{"TLS to a plaintext listener", []string{"--kafka-tls", "on", "--brokers", harness.New(t).Brokers[0]}, "did not complete a TLS handshake"},
	} {
		code, _, stderr := runMain(t, append(append([]string(nil), flags...), c.args...)...)
		if code != 1 || !strings.Contains(stderr, c.want) {
			t.Errorf("%s: exit %d: %q; want exit 1 naming %q", c.name, code, stderr, c.want)
		}
	}
	if code, _, stderr := runMain(t, append(flags, "--kafka-tls", "verify-none")...); code != 0 {
		t.Fatalf("--kafka-tls verify-none: exit %d: %s", code, stderr)
	}
}

// testCA writes a fresh CA's certificate to dir/ca.pem and returns its path
// and a server certificate for 127.0.0.1 that it signed.
func testCA(t *testing.T, dir string) (caFile string, server tls.Certificate) {
	t.Helper()
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "jobstream test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, caKey := certificate(t, ca, nil, nil)
	caFile = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644); err != nil {
		t.Fatal(err)
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, key := certificate(t, leaf, ca, caKey)
	return caFile, tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: key}
}

// certificate makes a fresh key and the certificate of tmpl for it (DER),
// signed by parent's key, or by itself when parent is nil.
func certificate(t *testing.T, tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}
