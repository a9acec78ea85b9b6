package admin

import (
	"cmp"
	"errors"

	"github.com/jobstream/jobstream/schema"
)

// SlotDefault is the replication slot Status reports on when none is
// given: the reader's default.
const SlotDefault = "jobstream"

// Deployment is what every admin function needs to know of a jobstream
// deployment: its steps and where their topics are. Each options struct
// embeds it.
type Deployment struct {
	// Pipeline is the steps in order (default schema.DefaultPipeline()).
	Pipeline schema.Pipeline
	// TopicPrefix is the prefix of every topic name (default
	// schema.DefaultTopicPrefix).
	TopicPrefix string
}

// resolve returns d's pipeline and topic names, defaults filled in.
func (d Deployment) resolve() (schema.Pipeline, schema.Topics) {
	p := d.Pipeline
	if len(p.Steps) == 0 {
		p = schema.DefaultPipeline()
	}
	return p, schema.Topics{Prefix: cmp.Or(d.TopicPrefix, schema.DefaultTopicPrefix)}
}

// invalid is an error in the caller's options: its message says what is
// wrong in the options' own terms, and errors.Is matches its sentinel, so a
// command line can say the same in terms of its flags.
type invalid struct {
	sentinel error
	msg      string
}

func (e invalid) Error() string { return e.msg }
func (e invalid) Unwrap() error { return e.sentinel }

// IsInvalid reports whether err is a mistake in the options given to an
// admin function (a usage error) rather than a failure of Postgres or the
// brokers.
func IsInvalid(err error) bool { return errors.As(err, new(invalid)) }
