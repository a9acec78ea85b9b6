// Package demo is the demo pipeline `jobstream dev` runs: jobs whose
// img_gen result lays out shapes (InsertJobs), and in-process step handlers
// (Handlers) that describe them, rasterise the image and find each shape's
// box and class, order the detections, and draw a labelled overlay PNG. The
// steps do small real work with the standard library only, so the demo
// shows the pipeline moving without a GPU.
package demo
