package admin_test

import (
	"testing"

	"github.com/jobstream/jobstream/ops/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }
