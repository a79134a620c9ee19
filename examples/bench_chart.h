/*
 * Hand-written SVG line chart for spk-bench: small multiples (one panel per scenario) of a
 * figure against batch size on a log2 x axis, one line per layout, with axes, ticks, labels and
 * a legend. No dependencies; header-only like the other example helpers.
 */
#ifndef SPK_EXAMPLES_BENCH_CHART_H
#define SPK_EXAMPLES_BENCH_CHART_H

#include <math.h>
#include <stdio.h>

/* Data: y[(panel * n_series + series) * n_x + x]; NAN where there is no figure (the line breaks). */
typedef struct bench_chart {
    const char *title;           /* first line above the panels */
    const char *subtitle;        /* second line (machine, threads); may be NULL */
    const char *y_label;         /* "output tok/s" */
    const char *x_label;         /* "batch size (concurrent requests)" */
    int n_panels;
    const char *const *panel_titles;
    int n_x;
    const int *x;                /* batch sizes, positive, ascending */
    int n_series;
    const char *const *series_names;
    const double *y;
} bench_chart;

/* Write text with the five XML special characters escaped. */
static inline void bc_text(FILE *f, const char *s)
{
    for (; s && *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&apos;", f); break;
        default:
            if ((unsigned char)*s >= 0x20 || *s == '\t')
                fputc(*s, f);
        }
    }
}

/* A "nice" tick step (1, 2 or 5 times a power of ten) giving about `n` intervals up to `max`. */
static inline double bc_nice_step(double max, int n)
{
    if (!(max > 0))
        return 1;
    double raw = max / n, p = pow(10, floor(log10(raw))), m = raw / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
}

static inline void bc_num(char *buf, size_t cap, double v)
{
    if (v != 0 && fabs(v) < 1)
        snprintf(buf, cap, "%.2g", v);
    else if (fabs(v) >= 10000)
        snprintf(buf, cap, "%.0fk", v / 1000);
    else
        snprintf(buf, cap, "%.0f", v);
}

/* Write the chart; returns 0, or -1 if the arguments make no chart (no panels, series or x). */
static inline int bench_chart_svg(FILE *f, const bench_chart *c)
{
    static const char *const colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                                         "#9467bd", "#8c564b", "#e377c2", "#17becf"};
    if (c->n_panels < 1 || c->n_series < 1 || c->n_x < 1)
        return -1;
    const double pw = 340, ph = 250;               /* plot area of one panel */
    const double ml = 70, mr = 20, mt = 78, mb = 60; /* margins around each plot area */
    const double legend_h = 28;
    const double W = c->n_panels * (ml + pw + mr), H = mt + ph + mb + legend_h;
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
               "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" font-size=\"12\">\n", W, H, W, H);
    fprintf(f, "<rect x=\"0\" y=\"0\" width=\"%.0f\" height=\"%.0f\" fill=\"white\"/>\n", W, H);
    fprintf(f, "<text x=\"%.1f\" y=\"22\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">", W / 2);
    bc_text(f, c->title);
    fprintf(f, "</text>\n");
    if (c->subtitle) {
        fprintf(f, "<text x=\"%.1f\" y=\"40\" text-anchor=\"middle\" font-size=\"11\" fill=\"#444\">", W / 2);
        bc_text(f, c->subtitle);
        fprintf(f, "</text>\n");
    }
    /* x positions: log2 of the batch size over [log2 x0, log2 xN] with a little padding */
    double lx0 = log2((double)c->x[0]), lx1 = log2((double)c->x[c->n_x - 1]);
    if (lx1 - lx0 < 1e-9) {
        lx0 -= 1;
        lx1 += 1;
    }
    const double pad = 0.06 * (lx1 - lx0);
    lx0 -= pad;
    lx1 += pad;
    for (int p = 0; p < c->n_panels; p++) {
        const double ox = p * (ml + pw + mr) + ml, oy = mt; /* top-left of the plot area */
        double ymax = 0;
        for (int s = 0; s < c->n_series; s++)
            for (int i = 0; i < c->n_x; i++) {
                double v = c->y[((size_t)p * c->n_series + s) * c->n_x + i];
                if (isfinite(v) && v > ymax)
                    ymax = v;
            }
        const double step = bc_nice_step(ymax > 0 ? ymax : 1, 5);
        const double ytop = step * ceil((ymax > 0 ? ymax * 1.05 : 1) / step);
        fprintf(f, "<g>\n<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"bold\">",
                ox + pw / 2, oy - 12);
        bc_text(f, c->panel_titles ? c->panel_titles[p] : "");
        fprintf(f, "</text>\n");
        /* grid, y ticks and labels */
        for (double v = 0; v <= ytop + step * 1e-6; v += step) {
            double y = oy + ph - v / ytop * ph;
            char lab[32];
            bc_num(lab, sizeof lab, v);
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e0e0e0\"/>\n", ox, y, ox + pw, y);
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", ox - 5, y, ox, y);
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n", ox - 8, y + 4, lab);
        }
        /* x ticks at the measured batch sizes */
        for (int i = 0; i < c->n_x; i++) {
            double x = ox + (log2((double)c->x[i]) - lx0) / (lx1 - lx0) * pw;
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#f0f0f0\"/>\n", x, oy, x, oy + ph);
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", x, oy + ph, x,
                    oy + ph + 5);
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%d</text>\n", x, oy + ph + 18, c->x[i]);
        }
        /* axes */
        fprintf(f, "<path d=\"M%.1f %.1f V%.1f H%.1f\" fill=\"none\" stroke=\"black\"/>\n", ox, oy, oy + ph, ox + pw);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", ox + pw / 2, oy + ph + 38);
        bc_text(f, c->x_label);
        fprintf(f, " (log2 scale)</text>\n");
        fprintf(f, "<text transform=\"translate(%.1f %.1f) rotate(-90)\" text-anchor=\"middle\">", ox - 52,
                oy + ph / 2);
        bc_text(f, c->y_label);
        fprintf(f, "</text>\n");
        /* one polyline per series, broken where a figure is missing, with a marker per point */
        for (int s = 0; s < c->n_series; s++) {
            const char *col = colors[s % (int)(sizeof colors / sizeof *colors)];
            int open = 0;
            for (int i = 0; i < c->n_x; i++) {
                double v = c->y[((size_t)p * c->n_series + s) * c->n_x + i];
                if (!isfinite(v)) {
                    if (open)
                        fprintf(f, "\"/>\n");
                    open = 0;
                    continue;
                }
                double x = ox + (log2((double)c->x[i]) - lx0) / (lx1 - lx0) * pw, y = oy + ph - v / ytop * ph;
                if (!open)
                    fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", col);
                fprintf(f, "%s%.1f,%.1f", open ? " " : "", x, y);
                open = 1;
            }
            if (open)
                fprintf(f, "\"/>\n");
            for (int i = 0; i < c->n_x; i++) {
                double v = c->y[((size_t)p * c->n_series + s) * c->n_x + i];
                if (!isfinite(v))
                    continue;
                double x = ox + (log2((double)c->x[i]) - lx0) / (lx1 - lx0) * pw, y = oy + ph - v / ytop * ph;
                fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"%s\"><title>", x, y, col);
                bc_text(f, c->series_names[s]);
                fprintf(f, " batch %d: %.1f</title></circle>\n", c->x[i], v);
            }
        }
        fprintf(f, "</g>\n");
    }
    /* legend, centred under the panels */
    const double item_w = 120, ly = H - legend_h / 2 - 4;
    double lx = W / 2 - c->n_series * item_w / 2;
    for (int s = 0; s < c->n_series; s++, lx += item_w) {
        const char *col = colors[s % (int)(sizeof colors / sizeof *colors)];
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"/>\n", lx,
                ly, lx + 26, ly, col);
        fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"%s\"/>\n", lx + 13, ly, col);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">", lx + 32, ly + 4);
        bc_text(f, c->series_names[s]);
        fprintf(f, "</text>\n");
    }
    fprintf(f, "</svg>\n");
    return 0;
}

#endif
