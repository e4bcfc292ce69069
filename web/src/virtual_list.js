// A virtualised list: only the rows in view (and a few around) are in the DOM, so a folder of
// thousands of files scrolls and updates as fast as one of ten.
export class VirtualList {
  constructor(container, rowHeight, renderRow) {
    this.container = container;
    this.rowHeight = rowHeight;
    this.renderRow = renderRow;
    this.count = 0;
    this.spacer = container.querySelector(".spacer");
    this.rows = document.createElement("div");
    this.rows.className = "rows";
    container.append(this.rows);
    container.addEventListener("scroll", () => this.render(), { passive: true });
  }

  setCount(count) {
    this.count = count;
    this.spacer.style.height = `${count * this.rowHeight}px`;
  }

  render() {
    const top = this.container.scrollTop;
    const height = this.container.clientHeight || 400;
    const first = Math.max(0, Math.floor(top / this.rowHeight) - 5);
    const last = Math.min(this.count, Math.ceil((top + height) / this.rowHeight) + 5);
    const nodes = [];
    for (let i = first; i < last; i++) nodes.push(this.renderRow(i));
    this.rows.style.transform = `translateY(${first * this.rowHeight}px)`;
    this.rows.replaceChildren(...nodes);
  }
}
