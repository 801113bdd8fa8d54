package capture

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"testing"
	"time"

	"mailcapture/legacyclient"
	"mailcapture/legacytest"
)

func TestZZLoad(t *testing.T) {
	d := legacytest.Start(t, legacytest.Options{})
	d.AddUser(t, "a@example.org", "pw")
	ep := legacyclient.Endpoint{Address: d.IMAPAddr, TLS: "none", Timeout: time.Minute}
	measure := func(label string) {
		var ds []time.Duration
		for i := 0; i < 20; i++ {
			t0 := time.Now()
			c, err := dialIMAP(context.Background(), ep, legacyclient.User("a@example.org", "pw"))
			if err != nil {
				t.Fatal(err)
			}
			ds = append(ds, time.Since(t0))
			c.Logout().Wait()
			c.Close()
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		psi, _ := os.ReadFile("/proc/pressure/cpu")
		fmt.Printf("ZZ %s min %v med %v max %v psi %s\n", label, ds[0], ds[10], ds[19], psi[:30])
	}
	measure("idle")
	for _, spec := range []struct{ n, nice int }{{4, 0}, {8, 0}, {2, -10}} {
		var hogs []*exec.Cmd
		for i := 0; i < spec.n; i++ {
			c := exec.Command("nice", "-n", fmt.Sprint(spec.nice), "sh", "-c", "while :; do :; done")
			c.Start()
			hogs = append(hogs, c)
		}
		time.Sleep(3 * time.Second)
		measure(fmt.Sprintf("%d hogs nice %d", spec.n, spec.nice))
		for _, h := range hogs {
			h.Process.Kill()
			h.Wait()
		}
		time.Sleep(time.Second)
	}
}
