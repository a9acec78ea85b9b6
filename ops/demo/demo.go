package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jobstream/jobstream/consumers"
)

// The demo pipeline does small real work a person can look at: img_gen (run
// by the demo's job inserter) lays out shapes, vlm_analyze describes them,
// yolo_detect rasterises the image and finds each shape's bounding box,
// planner orders the detections, overlay writes a PNG with the boxes drawn.

// demoSize is the side of the demo image the steps work on; overlay draws
// its PNG demoScale times larger, so the boxes and labels can be read.
const (
	demoSize  = 128
	demoScale = 4
)

type shape struct {
	Kind  string `json:"kind"` // "rect" or "disc"
	X     int    `json:"x"`
	Y     int    `json:"y"`
	W     int    `json:"w"`
	H     int    `json:"h"`
	Color [3]uint8
}

type imgGen struct {
	Width  int     `json:"width"`
	Height int     `json:"height"`
	Shapes []shape `json:"shapes"`
}

// box is one detection: its bounds (inclusive), its area in pixels, and its
// class ("rect" or "disc") with a confidence in 0..1.
type box struct {
	X0, Y0, X1, Y1 int
	Pixels         int
	Class          string  `json:"class"`
	Conf           float64 `json:"confidence"`
}

// demoImage lays out 1-4 non-overlapping shapes from seed (img_gen's work).
func demoImage(seed uint64) imgGen {
	r := rand.New(rand.NewPCG(seed, 7))
	g := imgGen{Width: demoSize, Height: demoSize}
	n := 1 + r.IntN(4)
	for i := 0; i < n; i++ {
		// One quadrant per shape keeps them apart.
		qx, qy := (i%2)*demoSize/2, (i/2)*demoSize/2
		w, h := 14+r.IntN(34), 14+r.IntN(34)
		kind := "rect"
		if r.IntN(2) == 0 {
			kind, h = "disc", w
		}
		g.Shapes = append(g.Shapes, shape{Kind: kind, X: qx + 4 + r.IntN(demoSize/2-w-8), Y: qy + 4 + r.IntN(demoSize/2-h-8), W: w, H: h,
			Color: [3]uint8{uint8(60 + r.IntN(190)), uint8(60 + r.IntN(190)), uint8(60 + r.IntN(190))}})
	}
	return g
}

func (g imgGen) render() *image.RGBA { return g.renderScaled(1) }

// renderScaled draws the image k times larger, discs round at that size.
func (g imgGen) renderScaled(k int) *image.RGBA {
	im := image.NewRGBA(image.Rect(0, 0, g.Width*k, g.Height*k))
	for i := range im.Pix {
		im.Pix[i] = 255
	}
	for _, s := range g.Shapes {
		c := color.RGBA{s.Color[0], s.Color[1], s.Color[2], 255}
		x0, y0, w, h := s.X*k, s.Y*k, s.W*k, s.H*k
		for y := y0; y < y0+h; y++ {
			for x := x0; x < x0+w; x++ {
				if s.Kind == "disc" {
					dx, dy := 2*(x-x0)-w+1, 2*(y-y0)-h+1
					if dx*dx+dy*dy > w*w {
						continue
					}
				}
				im.SetRGBA(x, y, c)
			}
		}
	}
	return im
}

// classify names a region by how much of its bounding box it fills: a
// rectangle fills all of it, a disc π/4 of it. The confidence grows with
// the distance from the other class's fill.
func classify(b *box) {
	const rect, disc = 1.0, math.Pi / 4
	fill := float64(b.Pixels) / float64((b.X1-b.X0+1)*(b.Y1-b.Y0+1))
	other := disc
	b.Class = "rect"
	if math.Abs(fill-disc) < math.Abs(fill-rect) {
		b.Class, other = "disc", rect
	}
	b.Conf = math.Round((0.5+0.49*min(1, math.Abs(fill-other)/(rect-disc)))*100) / 100
}

// overlayImage draws the image demoScale times larger with each box
// outlined and labelled with its class and confidence.
func overlayImage(g imgGen, boxes []box) *image.RGBA {
	const k, thick = demoScale, 3
	im := g.renderScaled(k)
	red := color.RGBA{210, 0, 0, 255}
	fill := func(x0, y0, x1, y1 int, c color.RGBA) {
		r := image.Rect(x0, y0, x1, y1).Intersect(im.Bounds())
		for y := r.Min.Y; y < r.Max.Y; y++ {
			for x := r.Min.X; x < r.Max.X; x++ {
				im.SetRGBA(x, y, c)
			}
		}
	}
	for _, b := range boxes {
		x0, y0, x1, y1 := b.X0*k-thick, b.Y0*k-thick, (b.X1+1)*k+thick, (b.Y1+1)*k+thick
		fill(x0, y0, x1, y0+thick, red)
		fill(x0, y1-thick, x1, y1, red)
		fill(x0, y0, x0+thick, y1, red)
		fill(x1-thick, y0, x1, y1, red)
		label := fmt.Sprintf("%s %.2f", b.Class, b.Conf)
		lw, lh := textWidth(label)+6, glyphH*fontScale+6
		ly := y0 - lh // above the box, or inside it at the top edge
		if ly < 0 {
			ly = y0 + thick
		}
		lx := min(x0, im.Bounds().Dx()-lw)
		fill(lx, ly, lx+lw, ly+lh, red)
		drawText(im, lx+3, ly+3, label, color.RGBA{255, 255, 255, 255})
	}
	return im
}

// detect finds the bounding box of every connected non-white region.
func detect(im *image.RGBA) []box {
	b := im.Bounds()
	seen := make([]bool, b.Dx()*b.Dy())
	var boxes []box
	for y := 0; y < b.Dy(); y++ {
		for x := 0; x < b.Dx(); x++ {
			if seen[y*b.Dx()+x] || im.RGBAAt(x, y) == (color.RGBA{255, 255, 255, 255}) {
				continue
			}
			bx := box{X0: x, Y0: y, X1: x, Y1: y}
			stack := []image.Point{{x, y}}
			seen[y*b.Dx()+x] = true
			for len(stack) > 0 {
				p := stack[len(stack)-1]
				stack = stack[:len(stack)-1]
				bx.Pixels++
				bx.X0, bx.Y0, bx.X1, bx.Y1 = min(bx.X0, p.X), min(bx.Y0, p.Y), max(bx.X1, p.X), max(bx.Y1, p.Y)
				for _, d := range []image.Point{{1, 0}, {-1, 0}, {0, 1}, {0, -1}} {
					q := p.Add(d)
					if !q.In(b) || seen[q.Y*b.Dx()+q.X] || im.RGBAAt(q.X, q.Y) == (color.RGBA{255, 255, 255, 255}) {
						continue
					}
					seen[q.Y*b.Dx()+q.X] = true
					stack = append(stack, q)
				}
			}
			classify(&bx)
			boxes = append(boxes, bx)
		}
	}
	return boxes
}

// Handlers returns the in-process handlers of the demo pipeline; a step
// without a demo of its own echoes what it was given. PNGs go to outDir.
func Handlers(outDir string) func(step string) consumers.Handler {
	return func(step string) consumers.Handler {
		return func(_ context.Context, job consumers.Job) (json.RawMessage, error) {
			var res struct {
				ImgGen     *imgGen `json:"img_gen"`
				YoloDetect *struct {
					Boxes []box `json:"boxes"`
				} `json:"yolo_detect"`
			}
			if err := json.Unmarshal(job.Results, &res); err != nil {
				return nil, consumers.Permanent(fmt.Errorf("results are not JSON: %w", err))
			}
			need := func(ok bool, what string) error {
				if !ok {
					return consumers.Permanent(fmt.Errorf("%s needs %s in results", step, what))
				}
				return nil
			}
			switch step {
			case "vlm_analyze":
				if err := need(res.ImgGen != nil, "img_gen"); err != nil {
					return nil, err
				}
				count := map[string]int{}
				for _, s := range res.ImgGen.Shapes {
					count[s.Kind]++
				}
				return json.Marshal(map[string]any{"caption": fmt.Sprintf("%d rectangles and %d discs on white", count["rect"], count["disc"])})
			case "yolo_detect":
				if err := need(res.ImgGen != nil, "img_gen"); err != nil {
					return nil, err
				}
				return json.Marshal(map[string]any{"boxes": detect(res.ImgGen.render())})
			case "planner":
				if err := need(res.YoloDetect != nil, "yolo_detect"); err != nil {
					return nil, err
				}
				order := make([]int, len(res.YoloDetect.Boxes))
				for i := range order {
					order[i] = i
				}
				sort.SliceStable(order, func(a, b int) bool {
					return res.YoloDetect.Boxes[order[a]].Pixels > res.YoloDetect.Boxes[order[b]].Pixels
				})
				return json.Marshal(map[string]any{"largest_first": order})
			case "overlay":
				if err := need(res.ImgGen != nil && res.YoloDetect != nil, "img_gen and yolo_detect"); err != nil {
					return nil, err
				}
				im := overlayImage(*res.ImgGen, res.YoloDetect.Boxes)
				path := filepath.Join(outDir, job.JobID+".png")
				f, err := os.Create(path)
				if err != nil {
					return nil, err
				}
				enc := png.Encoder{CompressionLevel: png.BestSpeed}
				if err := enc.Encode(f, im); err != nil {
					f.Close()
					return nil, err
				}
				if err := f.Close(); err != nil {
					return nil, err
				}
				return json.Marshal(map[string]any{"png": path, "boxes": len(res.YoloDetect.Boxes)})
			}
			return json.Marshal(map[string]any{"step": step, "attempt": job.Attempt})
		}
	}
}

// InsertJobs inserts n jobs whose first step (img_gen) is done: the
// inserter lays out each image, as an image generator would.
func InsertJobs(ctx context.Context, pool *pgxpool.Pool, first string, n int) error {
	const chunk = 500
	for i := 0; i < n; i += chunk {
		rows := [][]any{}
		for j := i; j < min(i+chunk, n); j++ {
			payload, _ := json.Marshal(map[string]any{"prompt": fmt.Sprintf("demo image %d", j+1), "seed": j + 1})
			results, _ := json.Marshal(map[string]any{first: demoImage(uint64(j + 1))})
			rows = append(rows, []any{fmt.Sprintf("demo-%06d", j+1), first, "done", string(payload), string(results)})
		}
		if _, err := pool.CopyFrom(ctx, pgx.Identifier{"jobs"}, []string{"job_id", "current_step", "status", "payload", "results"}, pgx.CopyFromRows(rows)); err != nil {
			return fmt.Errorf("insert demo jobs: %w", err)
		}
	}
	return nil
}
