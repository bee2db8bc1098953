package version

import "testing"

func TestString(t *testing.T) {
	old := Version
	defer func() { Version = old }()
	Version = "v1.2.3"
	if String() != "v1.2.3" {
		t.Fatalf("String() = %q, want the -ldflags value", String())
	}
	Version = "dev"
	if String() == "" {
		t.Fatal("String() is empty without -ldflags")
	}
}
