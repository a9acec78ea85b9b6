package demo

import (
	"flag"
	"image"
	"image/png"
	"os"
	"testing"
)

var updateDemoPNG = flag.Bool("update-demo-png", false, "rewrite docs/demo-overlay.png")

// demoPNGSeed lays out rectangles and discs for the README's picture.
const demoPNGSeed = 2

// TestDemoOverlayPNG: overlay's PNG is 512×512, every shape is detected,
// classed right and labelled (white text on a red tag above its box), and
// docs/demo-overlay.png, shown in the README, is what overlay draws today
// (go test ./ops/demo -run TestDemoOverlayPNG -update-demo-png rewrites it).
func TestDemoOverlayPNG(t *testing.T) {
	g := demoImage(demoPNGSeed)
	boxes := detect(g.render())
	if len(boxes) != len(g.Shapes) {
		t.Fatalf("%d boxes for %d shapes", len(boxes), len(g.Shapes))
	}
	classes := map[string]bool{}
	for _, b := range boxes {
		var s *shape
		for i := range g.Shapes {
			if g.Shapes[i].X == b.X0 && g.Shapes[i].Y == b.Y0 {
				s = &g.Shapes[i]
			}
		}
		if s == nil || s.Kind != b.Class || b.Conf < 0.5 || b.Conf > 0.99 {
			t.Errorf("box %+v: class %q confidence %.2f, shape %+v", b, b.Class, b.Conf, s)
		}
		classes[b.Class] = true
	}
	im := overlayImage(g, boxes)
	if im.Bounds() != image.Rect(0, 0, 512, 512) {
		t.Fatalf("overlay is %v, want 512×512", im.Bounds())
	}
	// Each label: white pixels inside a red tag.
	for _, b := range boxes {
		white := 0
		for y := max(0, b.Y0*demoScale-40); y < b.Y0*demoScale+40; y++ {
			for x := b.X0*demoScale - 3; x < b.X0*demoScale+textWidth(b.Class+" 0.00")+6; x++ {
				if c := im.RGBAAt(x, y); c.R == 255 && c.G == 255 && c.B == 255 && im.RGBAAt(x-1, y).G == 0 {
					white++
				}
			}
		}
		if white < 10 {
			t.Errorf("box %+v has no readable label (%d text pixels)", b, white)
		}
	}
	const path = "../../docs/demo-overlay.png"
	if *updateDemoPNG {
		if !classes["rect"] || !classes["disc"] {
			t.Fatalf("seed %d does not show both classes", demoPNGSeed)
		}
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := png.Encode(f, im); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("%v (rewrite it with -update-demo-png)", err)
	}
	defer f.Close()
	doc, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	if doc.Bounds() != im.Bounds() {
		t.Fatalf("%s is %v, overlay draws %v: rewrite it with -update-demo-png", path, doc.Bounds(), im.Bounds())
	}
	for y := 0; y < 512; y++ {
		for x := 0; x < 512; x++ {
			r1, g1, b1, _ := doc.At(x, y).RGBA()
			r2, g2, b2, _ := im.At(x, y).RGBA()
			if r1 != r2 || g1 != g2 || b1 != b2 {
				t.Fatalf("%s differs from what overlay draws at (%d, %d): rewrite it with -update-demo-png", path, x, y)
			}
		}
	}
}
