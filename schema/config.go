package schema

import "fmt"

// A ConfigError is a cdc or consumers Config that New refuses, or a failure
// whose fix is a change to the Config. Its message names the fields by
// their Go names, so that a command line can name its flags instead.
type ConfigError struct {
	Fields []string // the fields the message names, the one to change first
	Msg    string   // one sentence
}

func (e *ConfigError) Error() string { return e.Msg }

// FieldError returns a ConfigError about field, whose message is the
// field's name followed by the formatted rest: FieldError("Lease", "%s is
// too short", d).
func FieldError(field, format string, a ...any) error {
	return &ConfigError{Fields: []string{field}, Msg: field + " " + fmt.Sprintf(format, a...)}
}

// CheckConnection is the check a library Config makes of where it connects:
// a database URL (unless the caller gives its own pool) and brokers.
func CheckConnection(databaseURL string, hasPool bool, brokers []string) error {
	switch {
	case databaseURL == "" && !hasPool:
		return FieldError("DatabaseURL", "is empty; give a postgres:// URL, or set Pool")
	case len(brokers) == 0:
		return FieldError("Brokers", "is empty; give at least one host:port")
	}
	return nil
}

// CheckTopicPrefix is the check a library Config makes of its TopicPrefix:
// the topic names under it must be names Kafka allows.
func CheckTopicPrefix(prefix string) error {
	if err := ValidTopic(Topics{Prefix: prefix}.DLQ()); err != nil {
		return FieldError("TopicPrefix", "%q makes no valid topic name: %v", prefix, err)
	}
	return nil
}
