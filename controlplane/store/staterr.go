package store

import (
	"errors"
	"fmt"
)

// Errors of a state that cannot be used as it is. They come wrapped in a
// *StateError, which says which file (or store) and what is wrong; match
// them with errors.Is.
var (
	// ErrNotState: the file is not a controller state file (empty, not a
	// bbolt database, or a bbolt database without the controller's meta
	// bucket).
	ErrNotState = errors.New("not a 4over6-controller state file")
	// ErrFormat: the state was written in a format this controller does
	// not read (by a newer controller).
	ErrFormat = errors.New("state format not supported")
	// ErrCorrupt: the state is damaged (a broken page, a record that does
	// not decode, an inconsistent index).
	ErrCorrupt = errors.New("state is corrupt")
)

// StateError is why a state cannot be used. The store refuses to open it
// (or, found while running, refuses every later call): nothing is lost by
// guessing. The operator restores a backup or starts fresh.
type StateError struct {
	// Where is the file path or the store's String().
	Where string
	// Kind is ErrNotState, ErrFormat or ErrCorrupt.
	Kind error
	// Detail says what is wrong, for a person.
	Detail string
}

func (e *StateError) Error() string {
	switch e.Kind {
	case ErrNotState:
		return fmt.Sprintf("state file %s is not a 4over6-controller state file: %s", e.Where, e.Detail)
	case ErrFormat:
		return fmt.Sprintf("state %s: %s", e.Where, e.Detail)
	}
	return fmt.Sprintf("state %s is corrupt: %s", e.Where, e.Detail)
}

// Is matches the kind.
func (e *StateError) Is(target error) bool { return target == e.Kind }

func notState(where, format string, args ...any) error {
	return &StateError{Where: where, Kind: ErrNotState, Detail: fmt.Sprintf(format, args...)}
}

func corrupt(where, format string, args ...any) error {
	return &StateError{Where: where, Kind: ErrCorrupt, Detail: fmt.Sprintf(format, args...)}
}

// ErrInvalid marks a write the store refused because the record itself is
// wrong (a lease without owner, a data plane without id): the store works,
// the caller erred.
var ErrInvalid = errors.New("invalid record")

type invalidError struct{ msg string }

func (e *invalidError) Error() string        { return e.msg }
func (e *invalidError) Is(target error) bool { return target == ErrInvalid }

func invalid(format string, args ...any) error {
	return &invalidError{msg: fmt.Sprintf(format, args...)}
}
