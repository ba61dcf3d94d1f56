// The history dashboard's charts, built from the page's JSON when they scroll into view (views/dashboard.py).
const DATA = JSON.parse(document.getElementById('history-data').textContent);
const grid = document.getElementById('grid');
const selects = Array.from(document.querySelectorAll('select.filter'));
const drawn = new Map();  // chart id -> the implementation filter it was drawn with

function wanted(name) {
  const select = selects.find(s => s.name === name);
  return select ? select.value : '';
}

function commitTicks(chart) {
  const first = new Map();  // commit -> its first run's time, in time order
  const points = chart.lines.flatMap(line => line.x.map((x, i) => [x, line.commit[i]])).sort();
  for (const [x, commit] of points) { if (!first.has(commit)) first.set(commit, x); }
  const ticks = Array.from(first.entries());
  const every = Math.max(1, Math.ceil(ticks.length / DATA.maxCommitTicks));
  const shown = ticks.filter((_, i) => i % every === 0);
  return {tickvals: shown.map(t => t[1]), ticktext: shown.map(t => t[0].slice(0, 10))};
}

function draw(chart, element) {
  const impl = wanted('impl');
  const lines = chart.lines.filter(line => impl === '' || line.impl === impl);
  const traces = lines.map(line => ({
    x: line.x, y: line.y, name: line.impl, mode: 'lines+markers', type: 'scatter',
    line: {color: DATA.colours[line.impl]}, marker: {color: DATA.colours[line.impl], size: 5},
    error_y: {type: 'data', array: line.iqr.map(v => v === null ? 0 : v / 2), visible: line.iqr.some(v => v !== null)},
    text: line.x.map((x, i) => `${line.impl}<br>commit ${line.commit[i].slice(0, 10)}<br>${x}<br>${line.y[i].toPrecision(4)} ${chart.unit}` +
      (line.iqr[i] === null ? '' : ` (IQR ${line.iqr[i].toPrecision(3)})`) + `<br>${chart.machine}` +
      (line.contention[i] === null ? '' : `<br>contention ${(100 * line.contention[i]).toFixed(0)}%`) + `<br>torch ${line.torch[i]}`),
    hoverinfo: 'text',
  }));
  const marks = chart.marks.filter(m => impl === '' || m.colour === 'gray' || m.label.startsWith(impl + ' '));
  const ticks = commitTicks(chart);
  const layout = {
    margin: {l: 55, r: 10, t: 10, b: 60}, showlegend: true, legend: {orientation: 'h', y: -0.35},
    xaxis: {type: 'date', tickmode: 'array', tickvals: ticks.tickvals, ticktext: ticks.ticktext, tickangle: -30},
    yaxis: {title: chart.unit, type: chart.log ? 'log' : 'linear', rangemode: chart.log ? 'normal' : 'tozero'},
    shapes: marks.map(m => ({type: 'line', xref: 'x', yref: 'paper', x0: m.x, x1: m.x, y0: 0, y1: 1,
                             line: {color: m.colour, dash: m.colour === 'gray' ? 'dot' : 'dash'}})),
    annotations: marks.map((m, i) => ({x: m.x, xref: 'x', yref: 'paper', text: m.label, showarrow: false,
                                       y: 1 - 0.09 * marks.slice(0, i).filter(o => o.x === m.x).length,  // stacked, not overlaid
                                       font: {size: 10, color: m.colour}, xanchor: 'left'})),
  };
  Plotly.react(element.querySelector('.plot'), traces, layout, {displaylogo: false, responsive: true});
  drawn.set(chart.id, impl);
}

const observer = new IntersectionObserver(entries => {
  for (const entry of entries) {
    const chart = entry.target.chart;
    if (entry.isIntersecting && drawn.get(chart.id) !== wanted('impl')) draw(chart, entry.target);
  }
}, {rootMargin: '300px'});

for (const chart of DATA.charts) {
  const element = document.createElement('div');
  element.className = 'chart';
  element.id = chart.id;
  element.chart = chart;
  for (const name of ['machine', 'mode', 'shape', 'metric']) element.dataset[name] = chart[name];
  element.dataset.impls = chart.lines.map(line => line.impl).join('\n');
  element.innerHTML = '<h3></h3><p class="machine"></p><div class="plot"></div>';
  element.querySelector('h3').textContent = chart.title;
  element.querySelector('.machine').textContent = chart.machine;
  grid.appendChild(element);
  observer.observe(element);
}

function applyFilters() {
  let shown = 0;
  for (const element of grid.children) {
    const visible = selects.every(s => s.value === '' ||
      (s.name === 'impl' ? element.dataset.impls.split('\n').includes(s.value) : element.dataset[s.name] === s.value));
    element.style.display = visible ? '' : 'none';
    if (visible) {
      shown += 1;
      const rect = element.getBoundingClientRect();
      if (drawn.has(element.id) && drawn.get(element.id) !== wanted('impl') && rect.top < innerHeight + 300) draw(element.chart, element);
    }
  }
  document.getElementById('shown').textContent = shown;
}
selects.forEach(s => s.addEventListener('change', applyFilters));
applyFilters();
