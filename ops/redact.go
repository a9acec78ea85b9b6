package ops

import (
	"errors"
	"regexp"
)

var passwordInURL = regexp.MustCompile(`(postgres(?:ql)?://[^:/@\s]+:)[^@\s]+@`)

// redact hides passwords in connection URLs.
func redact(s string) string { return passwordInURL.ReplaceAllString(s, "${1}xxxxx@") }

// redactErr returns err with any password in a URL hidden.
func redactErr(err error) error {
	if err == nil {
		return nil
	}
	if r := redact(err.Error()); r != err.Error() {
		return errors.New(r)
	}
	return err
}
