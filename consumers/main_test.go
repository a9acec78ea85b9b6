package consumers_test

import (
	"testing"

	"github.com/jobstream/jobstream/ops/harness"
)

// TestMain starts the shared Postgres and broker every test of the package uses.
func TestMain(m *testing.M) { harness.Main(m) }
