package dataplane_test

import "github.com/fourover6/fourover6/dataplane/dataplanetest"

type (
	memTUN        = dataplanetest.MemTUN
	memController = dataplanetest.MemController
)

func newMemTUN() *memTUN { return dataplanetest.NewMemTUN(4, 16) }

func newMemController(size int) *memController { return dataplanetest.NewMemController(size) }
