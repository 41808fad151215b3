// Command etcd builds the etcd server from the Go module proxy for GeoCache's
// end-to-end tests (the etcd repository's own main package is not a published module).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
