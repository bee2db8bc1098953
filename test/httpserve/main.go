// Command httpserve is the demo's "IPv4 internet" web server: a page saying
// who asked, and /data?n=BYTES of deterministic data with its SHA-256 in the
// X-Sha256 header.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"strconv"
)

func main() {
	listen := flag.String("listen", ":80", "address to serve on")
	flag.Parse()
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "Hello from the IPv4 internet (%s). You came from %s.\n", r.Host, r.RemoteAddr)
	})
	mux.HandleFunc("/data", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.URL.Query().Get("n"))
		if err != nil || n < 0 || n > 1<<30 {
			http.Error(w, "want /data?n=BYTES (up to 1 GiB)", http.StatusBadRequest)
			return
		}
		b := make([]byte, n)
		rand.NewChaCha8([32]byte{}).Read(b)
		sum := sha256.Sum256(b)
		w.Header().Set("X-Sha256", hex.EncodeToString(sum[:]))
		w.Header().Set("Content-Length", strconv.Itoa(n))
		w.Write(b)
	})
	mux.HandleFunc("/upload", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, _ := io.Copy(h, r.Body)
		fmt.Fprintf(w, "%d %s\n", n, hex.EncodeToString(h.Sum(nil)))
	})
	log.Fatal(http.ListenAndServe(*listen, mux))
}
