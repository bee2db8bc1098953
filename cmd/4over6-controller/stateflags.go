package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"
)

// stateFlags are the flags that decide what happens to the state at start:
// an unusable --state file, a backup to start from.
type stateFlags struct {
	fresh   bool   // --fresh-state
	file    string // --restore
	replace bool   // --restore-replace
}

func (s *stateFlags) register(fs *pflag.FlagSet) {
	fs.BoolVar(&s.fresh, "fresh-state", false, "bbolt only: if the --state file cannot be used (empty, not a state file, corrupt, of a newer format), move it aside as PATH.broken-TIMESTAMP and start with an empty store; a usable file is used as it is")
	fs.StringVar(&s.file, "restore", "", "start from the backup `FILE` (4over6ctl backup): refused if the store already holds state (see --restore-replace); does nothing if the store was restored from this same backup before")
	fs.BoolVar(&s.replace, "restore-replace", false, "with --restore: replace the state the store holds; it is saved first as a backup (bbolt: PATH.replaced-TIMESTAMP next to --state; etcd: FILE.replaced-TIMESTAMP next to the backup)")
}

// check validates the combination.
func (s stateFlags) check(etcd bool) []error {
	var errs []error
	if s.fresh && etcd {
		errs = append(errs, errors.New("--fresh-state is for the bbolt --state file; with --store etcd://... it does nothing: remove it"))
	}
	if s.replace && s.file == "" {
		errs = append(errs, errors.New("--restore-replace only goes with --restore FILE"))
	}
	if s.file != "" {
		if strings.TrimSpace(s.file) == "" {
			errs = append(errs, errors.New("--restore is blank: give the backup file written by 4over6ctl backup"))
		} else if fi, err := os.Stat(s.file); err != nil {
			errs = append(errs, fmt.Errorf("--restore %q: %v", s.file, unwrapPathError(err)))
		} else if fi.IsDir() {
			errs = append(errs, fmt.Errorf("--restore %q: is a directory; give the backup file written by 4over6ctl backup", s.file))
		}
	}
	return errs
}

func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
