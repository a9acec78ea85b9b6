package schema

import "fmt"

// DefaultTopicPrefix is the prefix of every topic name when none is given.
const DefaultTopicPrefix = "jobs"

// DefaultPartitions is the partition count of topics jobstream creates.
const DefaultPartitions = 12

// Topics names the topics and consumer groups of one deployment, all
// under Prefix: <prefix>.<step> carries the changes of rows whose
// current_step is step, <prefix>.dlq the dead letters, <prefix>.replays the
// replay marks, and <prefix>.<step>.workers is the consumer group of a
// step's workers. The zero value has the prefix "".
type Topics struct {
	Prefix string
}

// Step returns the topic that carries changes of rows whose current_step is step.
func (t Topics) Step(step string) string { return t.Prefix + "." + step }

// DLQ returns the dead-letter topic.
func (t Topics) DLQ() string { return t.Prefix + "." + dlqName }

// Replays returns the topic where replays are recorded, keyed by job_id.
func (t Topics) Replays() string { return t.Prefix + "." + replaysName }

// The names after the prefix of the topics jobstream keeps for itself.
const (
	dlqName     = "dlq"
	replaysName = "replays"
)

// ReservedSteps are the names after the topic prefix that jobstream keeps
// for topics of its own (DLQ and Replays): no step may be named so.
var ReservedSteps = []string{dlqName, replaysName}

// Group returns the consumer group of the workers of step.
func (t Topics) Group(step string) string { return t.Prefix + "." + step + ".workers" }

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
