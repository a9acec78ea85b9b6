package harness

import (
	"fmt"
	"slices"
	"testing"
)

// ForExample is New for an Example function, which has no *testing.T: it
// gives the example named name its own database (migrated), slot and topic
// prefix. Call end when the example is done: it removes them. A failure
// panics, which fails the example.
func ForExample(name string) (e *Env, end func()) {
	t := &exampleT{name: name}
	return New(t), t.end
}

// exampleT is the part of testing.TB that New uses.
type exampleT struct {
	testing.TB
	name     string
	cleanups []func()
}

func (t *exampleT) Helper()           {}
func (t *exampleT) Name() string      { return t.name }
func (t *exampleT) Cleanup(fn func()) { t.cleanups = append(t.cleanups, fn) }
func (t *exampleT) Fatal(args ...any) { panic(fmt.Sprint(args...)) }
func (t *exampleT) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf(format, args...))
}

// end runs the cleanups, last registered first.
func (t *exampleT) end() {
	for _, fn := range slices.Backward(t.cleanups) {
		fn()
	}
}
